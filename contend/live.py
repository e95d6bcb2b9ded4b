"""A running variant's figures, read from its records as they are written.

``LiveFigures`` follows the files the samplers and the load processes append to (only the lines
added since its last look) and keeps the metrics that can only grow while a variant runs
(``contend.metrics.GROWING``) and the findings of the wait-for graph, each with when it first
appeared and how often it has been seen since. ``decided`` tells whether a threshold with
``abort: true`` has failed for good; `contend run` then stops the variant (docs/ci-gating.md).
The figures follow docs/records.md's definitions, over the records seen so far: a tick counts from
the load's start, a request when its record is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contend.diagnosis.findings import KIND_WORDS, KINDS
from contend.gate import evaluate
from contend.sample.nats import RESULTS_STREAM
from contend.stats import is_timeout
from contend.thresholds import Threshold, fmt_number

_TICK_GAUGES = {"edges": "edges_max", "blocked": "blocked_max", "depth": "depth_max",
                "idle_in_tx": "idle_in_tx_max"}


class Tail:
    """The complete lines appended to the files matching ``pattern`` under ``folder`` since the last read."""

    def __init__(self, folder: Path, pattern: str) -> None:
        self.folder, self.pattern = folder, pattern
        self.offsets: dict[Path, int] = {}

    def read(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.folder.glob(self.pattern)):
            try:
                with path.open("rb") as f:
                    f.seek(self.offsets.get(path, 0))
                    chunk = f.read()
            except OSError:
                continue
            complete = chunk[:chunk.rfind(b"\n") + 1]  # a torn last line waits for its end
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for line in complete.splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records


@dataclass
class LiveFinding:
    """A finding of the wait-for graph as a run goes: first seen (seconds from the load's start), seen."""

    kind: str
    key: str
    first_s: float
    seen: int
    threads: list[dict[str, Any]]

    def line(self) -> str:
        """``5.0 s cross-layer deadlock: job_result <-> _cachalot, seen 3x``."""
        functions = list(dict.fromkeys(str(t.get("function") or "?") for t in self.threads))
        who = " <-> ".join(functions[:3]) if self.kind == "cross_layer_deadlock" else ", ".join(functions[:3])
        return f"{self.first_s:.1f} s {KIND_WORDS.get(self.kind, self.kind)}: {who}, seen {self.seen}x"


class LiveFigures:
    """The growing metrics and the findings of one variant folder, up to the last ``poll``."""

    def __init__(self, folder: Path) -> None:
        self.ticks = Tail(folder / "samples", "pg_ticks.jsonl")
        self.nats = Tail(folder / "samples", "nats.jsonl")
        self.graphs = Tail(folder / "samples", "waitgraph.jsonl")
        self.requests = Tail(folder / "load", "requests-*.jsonl")
        self.values: dict[str, float] = {}
        self.findings: dict[tuple[str, str], LiveFinding] = {}
        self.load_start: float | None = None
        self.newest_t: float | None = None
        self.deadlock_episodes = 0
        self._deadlocks_last: set[str] = set()

    def poll(self, phases: Mapping[str, Mapping[str, Any]]) -> list[LiveFinding]:
        """Read what was written since the last call; return the findings seen for the first time.

        ``phases`` is the variant's phases so far (``Phases.phases``): nothing before the load's
        start counts, and a tick counts for ``_load`` or ``_drain`` by the phase it falls in.
        """
        load, drain = phases.get("load") or {}, phases.get("drain") or {}
        self.load_start = load.get("start")
        if self.load_start is None:
            return []
        for tick in self.ticks.read():
            self._tick(tick, load, drain)
        for sample in self.nats.read():
            if sample.get("stream") == RESULTS_STREAM and float(sample["t"]) >= self.load_start:
                pending = float(sample.get("num_pending") or 0)
                self._grow(_suffixed("queue_max", sample["t"], load, drain), pending)
        for request in self.requests.read():
            self._request(request)
        return self._graphs()

    def _grow(self, names: Sequence[str], value: float) -> None:
        for name in names:
            self.values[name] = max(self.values.get(name, value), value)

    def _count(self, name: str, by: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + by

    def _tick(self, tick: Mapping[str, Any], load: Mapping[str, Any], drain: Mapping[str, Any]) -> None:
        t = float(tick["t"])
        assert self.load_start is not None
        if t < self.load_start:
            return
        self.newest_t = max(t, self.newest_t or t)
        for field, metric in _TICK_GAUGES.items():
            self._grow(_suffixed(metric, t, load, drain), float(tick.get(field) or 0))
        self._grow(["idle_in_tx_max_age_s"], float(tick.get("idle_in_tx_max_age") or 0))
        self._grow(["lock_wait_max_s"], max((float(w.get("age") or 0) for w in tick.get("waits") or ()),
                                            default=0.0))

    def _request(self, request: Mapping[str, Any]) -> None:
        self._count("requests_failed", 0)
        self._count("timeouts", 0)
        if request.get("error") is not None:
            self._count("requests_failed")
            self._count("timeouts", int(is_timeout(request["error"])))
        if request.get("kind") == "result" and request.get("latency") is not None:
            self._grow(["latency_max_s"], float(request["latency"]))

    def _graphs(self) -> list[LiveFinding]:
        new = []
        for record in sorted(self.graphs.read(), key=lambda r: float(r["t"])):
            gauges = record.get("gauges") or {}
            self._grow(["python_lock_waiters_max"], float(gauges.get("python_lock_waiters") or 0))
            self._grow(["idle_in_tx_blocked_in_app_max"], float(gauges.get("idle_in_tx_blocked_in_app") or 0))
            deadlocks = set()
            for found in record.get("findings") or ():
                ident = (str(found["kind"]), str(found["key"]))
                if ident[0] == "cross_layer_deadlock":
                    deadlocks.add(ident[1])
                entry = self.findings.get(ident)
                if entry is None:
                    assert self.load_start is not None
                    entry = self.findings[ident] = LiveFinding(
                        ident[0], ident[1], round(float(record["t"]) - self.load_start, 3), 0,
                        list(found.get("threads") or ()))
                    new.append(entry)
                entry.seen += 1
            # An episode of a deadlock: consecutive graphs that show it (as summary.json counts them).
            self.deadlock_episodes += len(deadlocks - self._deadlocks_last)
            self._deadlocks_last = deadlocks
            self.values["cross_layer_deadlocks"] = self.deadlock_episodes
        return new

    def first_finding_s(self) -> dict[str, float]:
        """Seconds from the load's start to the first finding of each kind (``first_finding_s``)."""
        out: dict[str, float] = {}
        for f in self.findings.values():
            out[f.kind] = min(out.get(f.kind, f.first_s), f.first_s)
        return {kind: out[kind] for kind in sorted(out, key=lambda k: KINDS.index(k) if k in KINDS else 99)}

    def seconds(self) -> float | None:
        """Seconds from the load's start to the newest tick read."""
        if self.load_start is None or self.newest_t is None:
            return None
        return round(self.newest_t - self.load_start, 3)


def _suffixed(metric: str, t: float, load: Mapping[str, Any], drain: Mapping[str, Any]) -> list[str]:
    """The metric and its phase's variant: ``edges_max`` and ``edges_max_load`` (or ``_drain``)."""
    if drain.get("start") is not None and t >= float(drain["start"]):
        return [metric, f"{metric}_drain"]
    if load.get("end") is None or t <= float(load["end"]):
        return [metric, f"{metric}_load"]
    return [metric]


@dataclass(frozen=True)
class Stopped:
    """A threshold with ``abort: true`` that failed while its variant ran."""

    threshold: Threshold
    value: float
    at_s: float
    """Seconds from the load's start."""

    def text(self) -> str:
        """``stopped at 12.3 s: edges_max_load 37 >= 10``."""
        crossed = {"<": ">=", "<=": ">"}.get(self.threshold.op, "fails")
        return (f"stopped at {self.at_s:.1f} s: {self.threshold.metric} {fmt_number(self.value)} {crossed} "
                f"{fmt_number(self.threshold.number)}")

    def record(self) -> dict[str, Any]:
        return {"threshold": str(self.threshold), "metric": self.threshold.metric, "value": self.value,
                "at_s": self.at_s, "text": self.text()}


def decided(thresholds: Sequence[Threshold], figures: LiveFigures) -> Stopped | None:
    """Return the first ``abort: true`` threshold the figures so far fail, None while all hold."""
    aborting = [t for t in thresholds if t.abort and t.metric in figures.values]
    if not aborting:
        return None
    summary = {"variants": {"live": {"status": "ok", "metrics": figures.values}}}
    for check in evaluate(summary, {"live": aborting}).failed:
        assert check.value is not None
        return Stopped(check.threshold, check.value, figures.seconds() or 0.0)
    return None
