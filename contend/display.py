"""The live terminal view of `contend run`: variant i of n, phase, requests, p95, locks now."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from contend.load import LoadProgress


def last_tick(samples_dir: Path) -> dict[str, Any] | None:
    """Return the newest Postgres sampler tick of a variant, reading only the end of the file."""
    path = samples_dir / "pg_ticks.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            tick: dict[str, Any] = json.loads(line)
            return tick
        except ValueError:
            continue
    return None


class RunDisplay:
    """A rich Live panel on stderr; on a non-terminal it prints one line per event instead."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.variant = ""
        self.index = 0
        self.total = 0
        self.phase_text = ""
        self.started = time.monotonic()
        self.progress: LoadProgress | None = None
        self.tick: dict[str, Any] | None = None

    def _table(self) -> Table:
        table = Table.grid(padding=(0, 2))
        elapsed = time.monotonic() - self.started
        table.add_row(f"[bold]variant {self.index} of {self.total}[/] {self.variant}",
                      f"{self.phase_text}", f"{elapsed:6.1f} s")
        if self.progress is not None:
            p = self.progress
            p95 = f"{p.p95_s:.2f} s" if p.p95_s is not None else "-"
            table.add_row(f"requests ok {p.requests_ok} failed {p.requests_failed}",
                          f"in flight {p.in_flight}", f"p95 {p95}")
        if self.tick is not None:
            table.add_row(f"blocked backends {self.tick.get('blocked', 0)}",
                          f"edges {self.tick.get('edges', 0)}",
                          f"idle in tx {self.tick.get('idle_in_tx', 0)}")
        return table

    def _say(self, text: str) -> None:
        if not self.console.is_terminal:
            self.console.print(text, highlight=False)
        self.live.update(self._table())

    def variant_started(self, index: int, total: int, name: str) -> None:
        self.index, self.total, self.variant = index, total, name
        self.progress, self.tick = None, None
        self._say(f"variant {index}/{total}: {name}")

    def phase(self, text: str) -> None:
        self.phase_text = text
        self._say(f"  {text}")

    def load_progress(self, progress: LoadProgress, samples_dir: Path) -> None:
        self.progress = progress
        self.tick = last_tick(samples_dir)
        self.live.update(self._table())

    def variant_finished(self, name: str, status: str, reason: str | None) -> None:
        line = f"  {name}: {status}" + (f" ({reason})" if reason else "")
        if self.progress is not None:
            line += f", requests ok {self.progress.requests_ok} failed {self.progress.requests_failed}"
        self.console.print(line, highlight=False, markup=False)

    def __enter__(self) -> RunDisplay:
        if self.console.is_terminal:
            self.live.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.console.is_terminal:
            self.live.stop()
