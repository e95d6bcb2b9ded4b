"""The report of a run: ``summary.json``, ``report.html`` and ``report.md`` from the raw records.

    write_report(run_dir)                   render a run folder in place (also a partial run)
    write_comparison(run_a, run_b, out)     the same report over two runs, B against A's baseline

Rendering is pure (``html.render_html``, ``markdown.render_markdown``); the functions here only
read, call them and write files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contend.analysis import RunData, load_run, summarize, top_blockers

__all__ = ["ReportPaths", "write_comparison", "write_report"]


@dataclass(frozen=True)
class ReportPaths:
    summary: Path
    html: Path
    markdown: Path


def _write(
    run: RunData, out_dir: Path, title: str | None = None, sources: list[str] | None = None
) -> ReportPaths:
    from contend.report.html import render_html
    from contend.report.markdown import render_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(run)
    paths = ReportPaths(out_dir / "summary.json", out_dir / "report.html", out_dir / "report.md")
    paths.summary.write_text(json.dumps(summary, indent=2) + "\n")
    tops = {name: next(iter(top_blockers(reps[0], limit=1)), None) for name, reps in run.variants.items()}
    paths.markdown.write_text(render_markdown(summary, tops, title))
    paths.html.write_text(render_html(run, summary, out_dir, title, sources), encoding="utf-8")
    return paths


def write_report(run_dir: Path) -> ReportPaths:
    """Write summary.json, report.html and report.md into ``run_dir`` from its raw records."""
    run_dir = Path(run_dir)
    return _write(load_run(run_dir), run_dir)


def merge_runs(a: RunData, b: RunData, out_dir: Path) -> RunData:
    """Both runs' variants side by side (names prefixed ``A:``/``B:``), A's baseline as the baseline."""
    variants = {f"A: {n}": reps for n, reps in a.variants.items()} | {
        f"B: {n}": reps for n, reps in b.variants.items()
    }
    meta: dict[str, Any] = {
        k: a.meta.get(k) for k in ("contend_version", "python", "postgres", "nats", "cpus", "started")
    } | {
        "scenario": f"{a.name} vs {b.name}",
        "ended": b.meta.get("ended"),
        "status": "complete" if a.status == b.status == "complete" else "partial",
        "baseline": f"A: {a.baseline}",
        "variants": list(variants),
        "sweep": None,
    }
    notes = [f"A: {n}" for n in a.notes] + [f"B: {n}" for n in b.notes]
    return RunData(run_dir=out_dir, meta=meta, description="", variants=variants, notes=notes)


def write_comparison(run_a: Path, run_b: Path, out_dir: Path) -> ReportPaths:
    """Write the comparison of two run folders (B's variants against A's baseline) into ``out_dir``."""
    a, b = load_run(Path(run_a)), load_run(Path(run_b))
    merged = merge_runs(a, b, Path(out_dir))
    return _write(
        merged,
        Path(out_dir),
        title=f"{a.name} (A) vs {b.name} (B)",
        sources=[f"A = {a.run_dir}", f"B = {b.run_dir}"],
    )
