"""``contend watch``: a live view of the blocker forest of any Postgres, or its tick metrics as JSON.

Rendering is pure (``contend.sample.watchview.render`` turns one snapshot into lines of text);
``watch`` is the thin loop around it. Read-only: the sampler's connection runs with
``default_transaction_read_only``.
Given server processes (``pyspy_pids``, ``pyspy_pattern``), it also dumps their stacks whenever
backends wait on a lock or sit idle in a transaction (at most once a second; with locals when the
forest shows a reason, at most every 5 s) and shows the cross-layer wait-for graph's findings, each
with when it first appeared and how often it has been seen since, how the backends of those processes
were mapped to their threads (docs/metrics.md), and the Python waits next to the Postgres ones in the
forest.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live

from contend.errors import SamplerError
from contend.live import LiveFinding
from contend.sample import pyspy
from contend.sample.attribution import pids_matching
from contend.sample.crosslayer import CrossLayer, Dumper
from contend.sample.pg import PgSampler, Ticker, connect, session_timeouts
from contend.sample.ticker import Budget
from contend.sample.watchview import Screen

MIN_DUMP_INTERVAL_S = 1.0
THREAD_KEYS = ("pid", "tid", "function", "file", "line", "backend_pid", "mapped_by", "comment")


def json_findings(found: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return the findings as ``--json`` lines carry them: kind, key (the finding's identity), text,
    proof, threads (pid, tid, function, file, line, backend_pid, mapped_by, comment), a convoy's
    holder and waiters, and the candidates of backends mapped to several threads."""
    return [{"kind": f["kind"], "key": f.get("key"), "text": f["text"], "proof": f.get("proof", "proven"),
             "threads": [{k: t.get(k) for k in THREAD_KEYS} for t in f.get("threads") or ()],
             "holder": {k: f["holder"].get(k) for k in THREAD_KEYS} if f.get("holder") else None,
             "waiters": f.get("waiters"),
             "candidates": [{"backend_pid": c["backend_pid"],
                             "threads": [{k: t.get(k) for k in THREAD_KEYS} for t in c["candidates"]]}
                            for c in f.get("candidates") or ()]}
            for f in found]


class StackWatch:
    """py-spy on the watched server processes, on a thread of its own: the findings of the latest
    moment something waited, and every finding since the watch began. The Postgres loop hands it each
    snapshot and never waits for a dump."""

    def __init__(self, dsn: str, pids: Sequence[int], warn: Callable[[str], None],
                 dumper: Dumper = pyspy.dump, app_timeouts: Mapping[str, float] | None = None) -> None:
        try:
            timeouts = session_timeouts(dsn)
        except SamplerError as exc:
            warn(exc.message)
            timeouts = {}
        timeouts |= app_timeouts or {}  # what the application declares it sets wins over the defaults
        self.cross = CrossLayer(pids, timeouts, write=lambda records: None, dumper=dumper)
        self.warn = warn
        self._seen_so_far: dict[tuple[str, str], LiveFinding] = {}
        self.started = time.monotonic()
        self._findings: list[dict[str, Any]] = []
        self._graph: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="contend-watch-pyspy", daemon=True)
        self._thread.start()

    def update(self, tick: dict[str, Any], backends: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Hand over a snapshot (stacks are taken when something waits); return the current findings."""
        self.cross.observe(tick, backends)
        waits = bool(tick["blocked"] or tick["idle_in_tx"]) and bool(self.cross.pids)
        with self._lock:
            if not waits:
                self._findings, self._graph = [], None
            found = list(self._findings)
        if waits:
            self._wake.set()
        return found

    @property
    def findings(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._findings)

    @property
    def graph(self) -> dict[str, Any] | None:
        """The wait-for graph record of the latest stacks (None while nothing waits)."""
        with self._lock:
            return self._graph

    @property
    def mapping(self) -> dict[str, Any] | None:
        """How the backends were mapped at the latest moment stacks were taken."""
        graph = self.graph
        return graph.get("mapping") if graph else None

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._wake.wait(0.2):
                continue
            self._wake.clear()
            started = time.monotonic()
            with_locals = self.cross.locals_due() is not None
            records, cost = self.cross.dump_all(with_locals)
            if cost["failed"] and not records and not self._warned:
                self._warned = True  # said once: the view shows every warning at every refresh
                self.warn(f"py-spy could not read pids {self.cross.pids}: no findings (are they Python "
                          "processes? py-spy needs root or SYS_PTRACE)")
            record = self.cross.moment(records)
            with self._lock:
                self._graph = record
                self._findings = [self._seen(f) for f in (record["findings"] if record else [])]
            self._stop.wait(max(0.0, MIN_DUMP_INTERVAL_S - (time.monotonic() - started)))

    @property
    def seen(self) -> dict[tuple[str, str], LiveFinding]:
        """Every finding since the watch began: when it first appeared, how often it has been seen."""
        with self._lock:
            return dict(self._seen_so_far)

    def _seen(self, found: dict[str, Any]) -> dict[str, Any]:
        """Count the finding in the watch's history; return it with its ``line`` ("5.0 s ..., seen 3x")."""
        ident = (str(found["kind"]), str(found["key"]))
        entry = self._seen_so_far.get(ident)
        if entry is None:
            since = round(time.monotonic() - self.started, 1)
            threads = list(found.get("threads") or ())
            entry = self._seen_so_far[ident] = LiveFinding(ident[0], ident[1], since, 0, threads)
        entry.seen += 1
        return found | {"line": entry.line()}

    def close(self) -> None:
        """Stop the py-spy thread (a dump in progress ends within py-spy's own timeout)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=15.0)


def watch(dsn: str, *, interval: float = 1.0, as_json: bool = False, out: TextIO | None = None,
          pyspy_pids: Sequence[int] = (), pyspy_pattern: str | None = None,
          dumper: Dumper = pyspy.dump, app_timeouts: Mapping[str, float] | None = None,
          cpu_budget_pct: float | None = 3.0) -> None:
    """Sample ``dsn`` every ``interval`` seconds until Ctrl-C; a live view, or tick records as JSON lines.

    With ``pyspy_pids`` or ``pyspy_pattern`` (a regular expression on command lines), py-spy reads
    those server processes and each snapshot carries the wait-for graph's findings (of the latest
    py-spy round: the dumps run beside the Postgres loop, which keeps its rate; ``late_ms`` of each
    tick says how far behind its due time it began). Over ``cpu_budget_pct`` of a core the sampler
    ticks slower (``interval_s`` of each tick, and a line of the view, say so).
    Returns normally on Ctrl-C (watching ends only that way, so it is not an error).
    """
    out = out or sys.stdout
    conn = connect(dsn)
    stacks: StackWatch | None = None
    try:
        sampler = PgSampler(conn)
        pids = sorted({*pyspy_pids, *(pids_matching(pyspy_pattern) if pyspy_pattern else ())})
        if pyspy_pids or pyspy_pattern:
            stacks = StackWatch(dsn, pids, sampler.warnings.append, dumper=dumper, app_timeouts=app_timeouts)
        if pyspy_pattern and not pids:
            sampler.warnings.append(f"no process matches {pyspy_pattern!r}: no stacks are taken")
        ticker = Ticker(interval, cpu_budget_pct=cpu_budget_pct)
        budget = Budget(ticker)
        if as_json:
            for warning in sampler.warnings:
                print(f"Warning: {warning}", file=sys.stderr)
            while True:
                tick, backends = budget.tick(sampler)
                found = stacks.update(tick, backends) if stacks else []
                line = tick | {"findings": json_findings(found)}
                if stacks and stacks.mapping is not None:
                    line["mapping"] = stacks.mapping
                out.write(json.dumps(line, default=str) + "\n")
                out.flush()
                time.sleep(ticker.wait_s())
        console = Console(file=out)
        screen = Screen(interval)
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                tick, backends = budget.tick(sampler)
                shown = stacks.update(tick, backends) if stacks else None
                warnings = [*sampler.warnings, *budget.lowered(tick)]
                graph = stacks.graph if stacks else None
                view = screen.frame(tick, backends, warnings, shown, graph, console.size.height)
                if view is not None:
                    live.update(view, refresh=True)
                time.sleep(ticker.wait_s())
    except KeyboardInterrupt:
        return
    finally:
        if stacks is not None:
            stacks.close()
        conn.close()
