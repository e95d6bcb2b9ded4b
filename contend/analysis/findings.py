"""The findings of each variant, in words, computed from its records (never templated per scenario).

``samples/waitgraph.jsonl`` holds the findings of each moment the sampler built the cross-layer
wait-for graph; ``contend.diagnosis.findings.aggregate`` merges them over the run. The dominant root
blocker comes from the Postgres ticks (``top_blockers``). ``variant_sentences`` says the most
important ones in at most five sentences; ``comparison`` says in one what a variant changed
against the baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from contend.analysis.details import blocked_seconds, top_blockers
from contend.analysis.reading import VariantRun
from contend.diagnosis import findings as graph_findings
from contend.diagnosis.threads import OWN_CODE, app_root, is_own, own_chain

NAMES = {
    "cross_layer_deadlock": "cross-layer deadlock",
    "python_lock_convoy": "Python lock convoy",
    "idle_in_tx_waiting_on_app": "root blocker idle in transaction, blocked in the application",
    "dominant_root_blocker": "dominant root blocker",
}
PYTHON_KINDS = ("cross_layer_deadlock", "python_lock_convoy", "idle_in_tx_waiting_on_app")


def _own(frames: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    if any(is_own(f, OWN_CODE) for f in frames):
        return OWN_CODE
    root = app_root([{"threads": [{"frames": list(frames)}]}])
    return (root,) if root else OWN_CODE


def dominant_root_blocker(run: VariantRun) -> dict[str, Any] | None:
    """Return the statement that caused most blocked-seconds, as a finding, or None when nobody waited."""
    top = top_blockers(run, limit=1)
    total = blocked_seconds(run)
    if not top or total <= 0 or top[0].blocked_s <= 0:
        return None
    b = top[0]
    att = b.attribution or {}
    frames = att.get("stack") or []
    own = _own(frames)
    inner: Mapping[str, Any] = next((f for f in frames if is_own(f, own)), {})
    path = own_chain(frames, own) if frames else ""
    states = " / ".join(b.states) or "state unknown"
    statement = b.fingerprint if len(b.fingerprint) <= 120 else b.fingerprint[:120] + " …"
    text = (f"The dominant root blocker, `{statement}` (root while {states}), caused "
            f"{b.blocked_s / total:.0%} of the {total:.0f} blocked-seconds, "
            f"up to {b.max_blocks} backends at once")
    text += f"; its holder was in {path}." if path else "; no stack of its holder was taken."
    thread = {
        "pid": att.get("client_pid"), "tid": att.get("thread_id"), "backend_pid": att.get("backend_pid"),
        "function": inner.get("name"), "file": inner.get("filename"), "line": inner.get("line"), "path": path,
    }
    return {
        "kind": "dominant_root_blocker", "key": b.fingerprint, "text": text,
        "threads": [thread] if att else [], "statement": b.fingerprint,
        "share": round(b.blocked_s / total, 4),
        "blocked_s": round(b.blocked_s, 3), "samples": None, "episodes": None,
        "first_seen": None, "last_seen": None,
    }


def variant_findings(run: VariantRun) -> list[dict[str, Any]]:
    """Return the variant's findings over the run, most important first (times relative to its start)."""
    found = graph_findings.aggregate(run.waitgraph)
    origin = run.origin
    for f in found:
        f["first_seen"] = round(float(f["first_seen"]) - origin, 3)
        f["last_seen"] = round(float(f["last_seen"]) - origin, 3)
    dominant = dominant_root_blocker(run)
    return found + ([dominant] if dominant else [])


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _graphs(n: int) -> str:
    return f"in {n} wait-for graph{'s' if n != 1 else ''}"


def variant_sentences(run: VariantRun, found: Sequence[Mapping[str, Any]], limit: int = 5) -> list[str]:
    """Return at most ``limit`` sentences, most important first: one per finding kind, with its worst case."""
    graphs = len(run.waitgraph)
    locals_graphs = sum(1 for r in run.waitgraph if r.get("locals"))
    lines = []
    for kind in graph_findings.KINDS:
        group = [f for f in found if f["kind"] == kind]
        if not group:
            continue
        worst = max(group, key=lambda f: (f.get("samples") or 0, f.get("size_max") or 0))
        if kind == "cross_layer_deadlock":
            episodes = sum(int(f["episodes"]) for f in group)
            lines.append(
                f"A cross-layer deadlock was seen {_times(episodes)} ({len(group)} distinct cycle(s), in "
                f"{sum(int(f['samples']) for f in group)} of {graphs} wait-for graphs, first at "
                f"{min(float(f['first_seen']) for f in group):.1f} s). Worst: {worst['text']}")
        elif kind == "python_lock_convoy":
            lines.append(
                f"Python lock convoys in {sum(int(f['samples']) for f in group)} of {graphs} wait-for graphs "
                f"({len(group)} lock(s), up to {max(int(f['size_max']) for f in group)} waiting threads with "
                f"open transactions). Worst: {worst['text']}")
        elif kind == "idle_in_tx_waiting_on_app":
            lines.append(
                f"In {sum(int(f['samples']) for f in group)} of {graphs} wait-for graphs a root blocker was "
                f"idle in transaction while its thread was blocked in the application. "
                f"Most often: {worst['text']}")
        else:
            lines.append(str(worst["text"]))
    if graphs and not any(f["kind"] in PYTHON_KINDS for f in found):
        lines.insert(0, f"No cross-layer cycle and no thread waiting on a Python lock with an open "
                        f"transaction in {graphs} wait-for graphs ({locals_graphs} with locals).")
    elif not run.waitgraph_recorded:
        lines.insert(0, "This run kept no wait-for graph records, so Python waits are not known.")
    elif not graphs:
        lines.insert(0, "No py-spy stack showed a wait, so no wait-for graph was recorded." if run.pyspy
                     else "No py-spy stacks were taken, so Python waits are not known.")
    return lines[:limit]


def comparison(base_name: str, base: VariantRun, base_found: Sequence[Mapping[str, Any]],
               name: str, run: VariantRun, found: Sequence[Mapping[str, Any]]) -> str:
    """Return one sentence: blocked-seconds and each finding kind of ``name`` against the baseline."""
    parts = []
    before, after = blocked_seconds(base), blocked_seconds(run)
    if before > 0 and after <= before:
        parts.append(f"{name} removed {1 - after / before:.0%} of the blocked-seconds of {base_name}"
                     f" ({before:.0f} → {after:.0f})")
    elif before > 0:
        parts.append(f"{name} had {after / before:.3g} times the blocked-seconds of {base_name}"
                     f" ({before:.0f} → {after:.0f})")
    elif after > 0:
        parts.append(f"{name} had {after:.0f} blocked-seconds where {base_name} had none")
    for kind in PYTHON_KINDS:
        # A deadlock is counted in episodes; a convoy or an idle holder in the graphs that showed it.
        count = "episodes" if kind == "cross_layer_deadlock" else "samples"
        was = sum(int(f.get(count) or 0) for f in base_found if f["kind"] == kind)
        now = sum(int(f.get(count) or 0) for f in found if f["kind"] == kind)
        label, seen = NAMES[kind], _times if count == "episodes" else _graphs
        if was and not now:
            parts.append(f"the {label} seen {seen(was)} in {base_name} is absent")
        elif now and not was:
            parts.append(f"a {label} appears (seen {seen(now)}), absent in {base_name}")
        elif now and was:
            parts.append(f"the {label} was seen {seen(now)}, in {base_name} {seen(was)}")
    if not parts:
        return f"{name} and {base_name} show the same: no blocked backends and no Python finding."
    return "; ".join(parts) + "."
