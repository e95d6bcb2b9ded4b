"""The findings of each variant, in words, computed from its records (never templated per scenario).

``samples/waitgraph.jsonl`` holds the findings of each moment the sampler built the cross-layer
wait-for graph; ``contend.diagnosis.findings.aggregate`` merges them over the run. The dominant root
blocker comes from the Postgres ticks (``top_blockers``). ``variant_items`` says the most important
ones in at most five short sentences (what and where, about 30 words), each with the finding it
speaks of (its threads: the report's table; its worst moment: the report's picture);
``comparison`` says in one what a variant changed against the baseline.
"""

from __future__ import annotations

import statistics
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
STATEMENT_CHARS = 60
"""The dominant root blocker's statement in its sentence (the whole is in the blocker table)."""
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
    statement = b.fingerprint
    if len(statement) > STATEMENT_CHARS:
        statement = statement[:STATEMENT_CHARS] + " …"
    text = (f"The dominant root blocker, `{statement}` ({states}), caused {b.blocked_s / total:.0%} of "
            f"{total:.0f} blocked-seconds, up to {b.max_blocks} waiting")
    text += f"; its holder was in `{path}`." if path else "; no stack of its holder was taken."
    thread = {
        "pid": att.get("client_pid"), "tid": att.get("thread_id"), "backend_pid": att.get("backend_pid"),
        "function": inner.get("name"), "file": inner.get("filename"), "line": inner.get("line"), "path": path,
        "role": att.get("role"), "xact_age_s": None,
        "waits_for": "the application" if att.get("state") == "idle in transaction" else None,
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
        if f.get("t_worst") is not None:
            f["t_worst_s"] = round(float(f.pop("t_worst")) - origin, 3)
    dominant = dominant_root_blocker(run)
    return found + ([dominant] if dominant else [])


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _graphs(n: int) -> str:
    return f"in {n} wait-for graph{'s' if n != 1 else ''}"


def variant_sentences(run: VariantRun, found: Sequence[Mapping[str, Any]], limit: int = 5) -> list[str]:
    """Return the sentences of ``variant_items``."""
    return [str(item["text"]) for item in variant_items(run, found, limit)]


def _own_words(finding: Mapping[str, Any]) -> str:
    """The finding's own short words (what and where); a record of an older contend has only its long text."""
    text = str(finding.get("short") or finding.get("text") or "")
    return text[:1].upper() + text[1:]


def variant_items(run: VariantRun, found: Sequence[Mapping[str, Any]], limit: int = 5
                  ) -> list[dict[str, Any]]:
    """Return at most ``limit`` findings in words, most important first: one per finding kind, its
    worst case, as ``{"text", "finding"}`` (``finding`` None for a sentence about the records)."""
    graphs = len(run.waitgraph)
    locals_graphs = sum(1 for r in run.waitgraph if r.get("locals"))
    items: list[dict[str, Any]] = []
    for kind in graph_findings.KINDS:
        group = [f for f in found if f["kind"] == kind]
        if not group:
            continue
        worst = max(group, key=lambda f: (f.get("samples") or 0, f.get("size_max") or 0))
        first = min((float(f["first_seen"]) for f in group if f.get("first_seen") is not None), default=None)
        since = f" from {first:.1f} s" if first is not None else ""
        samples = sum(int(f.get("samples") or 0) for f in group)
        if kind == "cross_layer_deadlock":
            episodes = sum(int(f["episodes"]) for f in group)
            cycles = f" ({len(group)} cycles)" if len(group) > 1 else ""
            text = f"Cross-layer deadlock{cycles}, seen {_times(episodes)}{since}: {_own_words(worst)}"
            if worst.get("ends") is None and (hint := timeout_evidence(run)):
                text += f" {hint}"
        elif kind == "python_lock_convoy":
            text = f"Python lock convoy in {samples} of {graphs} wait-for graphs{since}: {_own_words(worst)}"
        elif kind == "idle_in_tx_waiting_on_app":
            text = (f"Idle in transaction, blocked in the app, in {samples} of {graphs} graphs{since}: "
                    f"{_own_words(worst)}")
        else:
            text = str(worst["text"])
        items.append({"text": text, "finding": worst})
    note = None
    if graphs and not any(f["kind"] in PYTHON_KINDS for f in found):
        note = (f"No cross-layer cycle and no thread waiting on a Python lock with an open "
                f"transaction in {graphs} wait-for graphs ({locals_graphs} with locals).")
    elif not run.waitgraph_recorded:
        note = "This run kept no wait-for graph records, so Python waits are not known."
    elif not graphs:
        note = ("No py-spy stack showed a wait, so no wait-for graph was recorded." if run.pyspy
                else "No py-spy stacks were taken, so Python waits are not known.")
    if note:
        items.insert(0, {"text": note, "finding": None})
    return items[:limit]


CLUSTER_MIN_S = 1.0
"""Lock waits shorter than this say nothing about a timeout (a statement finishing ends them)."""


def timeout_evidence(run: VariantRun) -> str | None:
    """Say what the records tell of a timeout that no session can read: lock waits that ended at one
    length (within a tick), and the statement timeouts Postgres logged; None when they tell nothing.

    An application's own ``SET statement_timeout`` is invisible to another session, but its effect is
    not: every wait it cancels ends after the same time."""
    ended = sorted(w.duration for w in run.waits if w.next_tick is not None and w.duration >= CLUSTER_MIN_S)
    words = []
    if len(ended) >= 3:
        mode = max(ended, key=lambda d: sum(1 for e in ended if abs(e - d) <= 0.25))
        near = [d for d in ended if abs(d - mode) <= 0.25]
        if len(near) >= 3 and len(near) * 2 >= len(ended):
            words.append(f"{len(near)} of its {len(ended)} longer lock waits ended after "
                         f"{min(near):.1f}-{max(near):.1f} s, consistent with a statement_timeout or "
                         f"lock_timeout of about {round(statistics.median(near)):.0f} s")
    logged = sum(1 for e in run.server_log.events if e.kind == "statement_timeout") if run.server_log else 0
    if logged:
        words.append(f"Postgres logged {logged} statement timeout{'s' if logged > 1 else ''}")
    text = "; ".join(words)
    return text[:1].upper() + text[1:] + "." if words else None


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
