"""summary.json to a short markdown report, sized for a pull-request comment (pure)."""

from __future__ import annotations

from typing import Any

from contend.analysis import Blocker
from contend.report.tables import common_text, differing, flags_text, fmt, headlines, rows, verdict_rows


def _md(text: str) -> str:
    """Keep text from the database from breaking a table cell or opening markup, and readable as text:
    ``|`` escaped, ``<`` backslash-escaped outside `code spans` (inside them markdown shows it as is)."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(part if i % 2 else part.replace("<", "\\<") for i, part in enumerate(parts))


def render_markdown(
    summary: dict[str, Any], blockers: dict[str, Blocker | None], title: str | None = None
) -> str:
    """Return the markdown report: status, headline sentences, the verdict table, the top blocker each."""
    names = list(summary["variants"])
    lines = [f"## contend: {_md(title or summary['scenario'])} ({summary['status']})", ""]
    for name, entry in summary["variants"].items():
        if entry["status"] == "stopped" and entry["reason"]:
            lines.append(f"- **{_md(name)}** {_md(entry['reason'])}")  # "stopped at 2.5 s: ..."
        elif entry["status"] != "ok":
            lines.append(
                f"- **{_md(name)}** {entry['status']}: {_md(entry['reason'] or 'no reason recorded')}"
            )
    lines += [f"- {_md(line)}" for line in headlines(summary)]
    lines.append("")
    header = ["metric"] + [f"{_md(n)}{' (baseline)' if n == summary['baseline'] else ''}" for n in names]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows(summary, verdict_rows(summary)):
        cells = []
        for cell in row.cells:
            text = cell.value + (f" [{cell.spread}]" if cell.spread else "")
            if cell.delta:
                mark = " ✓" if cell.real else ""
                text += f" ({cell.delta}{mark})"
            cells.append(_md(text))
        lines.append(f"| {_md(row.label)} | " + " | ".join(cells) + " |")
    for name, entry in summary["variants"].items():
        if by_name := entry.get("requests_by_name"):
            lines += ["", f"**Requests by name: {_md(name)}**", "",
                      "| name | requests | failed | p50 (s) | p95 (s) | p99 (s) |", "|---" * 6 + "|"]
            lines += [f"| {_md(r['name'])} | {fmt(r['requests_total'])} | {fmt(r['requests_failed'])} | "
                      f"{fmt(r['latency_p50_s'])} | {fmt(r['latency_p95_s'])} | {fmt(r['latency_p99_s'])} |"
                      for r in by_name]
    lines += ["", "**Findings**", ""]
    for name, entry in summary["variants"].items():
        lines.append(f"- `{_md(name)}`:")
        lines += [f"  - {_md(text)}" for text in entry.get("findings_text") or ["no findings recorded."]]
        if entry.get("mapping"):
            lines.append(f"  - {_md('Backends to threads: ' + entry['mapping']['text'] + '.')}")
    lines.append("")
    varying = differing(summary)
    for name in names:
        b = blockers.get(name)
        flags = _md(flags_text(summary["variants"][name], varying))
        if summary["variants"][name]["status"] == "failed":
            lines.append(f"- `{_md(name)}` ({flags}): failed, no figures")
        elif b is None:
            lines.append(f"- `{_md(name)}` ({flags}): no blocked backends seen")
        else:
            lines.append(
                f"- `{_md(name)}` ({flags}): top root blocker `{_md(b.fingerprint[:120])}`, "
                f"{b.blocked_s:.0f} blocked-s, up to {b.max_blocks} blocked"
            )
    if varying and common_text(summary):
        lines += ["", f"Every variant: `{_md(common_text(summary))}`."]
    repeated = any(e["repetitions"] > 1 for e in summary["variants"].values())
    lines += [
        "",
        "Deltas against the baseline"
        + (
            "; ✓ = distinguishable from the spread of the repetitions (95 % bootstrap interval"
            " excludes 0 with 3+ repetitions; ranges apart with 2)."
            if repeated
            else "; single runs, no spread measured."
        )
        + " Postgres and queue figures cover load and drain. Full report: `report.html` in the run folder.",
    ]
    return "\n".join(lines) + "\n"
