"""Run folders: one per command that records something, named by what ran and when (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

DEFAULT_REPORTS = Path("reports")


def run_folder(name: str, root: Path = DEFAULT_REPORTS) -> Path:
    """Return a new, empty folder ``<root>/<name>-<UTC timestamp>`` (created)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = root / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{name}-{stamp}-{n}"
    path.mkdir(parents=True)
    return path
