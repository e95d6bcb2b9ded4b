"""``contend watch``: a live view of the blocker forest of any Postgres, or its tick metrics as JSON.

Rendering is pure (``render`` turns one snapshot into rich renderables); ``watch`` is the thin
loop around it. Read-only: the sampler's connection runs with ``default_transaction_read_only``.
Given server processes (``pyspy_pids``, ``pyspy_pattern``), it also dumps their stacks whenever
backends wait on a lock or sit idle in a transaction (at most once a second; with locals when the
forest shows a reason, at most every 5 s) and shows the cross-layer wait-for graph's findings.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from contend.errors import SamplerError
from contend.sample import pyspy
from contend.sample.attribution import pids_matching
from contend.sample.crosslayer import CrossLayer, Dumper
from contend.sample.pg import PgSampler, Ticker, connect, session_timeouts

QUERY_WIDTH = 100
MIN_DUMP_INTERVAL_S = 1.0
THREAD_KEYS = ("pid", "tid", "function", "file", "line", "backend_pid")


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def _query(text: str | None) -> str:
    return " ".join((text or "").split())[:QUERY_WIDTH]


def _label(backend: Mapping[str, Any] | None, pid: int, extra: str = "") -> Text:
    if backend is None:
        return Text(f"pid {pid}  (not in this database){extra}", style="dim")
    label = Text(f"pid {pid} ", style="bold")
    label.append(f"{backend['state'] or '?'}", style="yellow" if backend["state"] != "active" else "green")
    label.append(f"  xact {_age(backend['xact_age'])}  {backend['app'] or ''}{extra}\n")
    label.append(_query(backend["query"]), style="cyan")
    return label


def parents(blocked_by: Mapping[int, Sequence[int]]) -> dict[int, int]:
    """Return waiter -> the one blocker to draw it under: its blocker deepest in the forest.

    Postgres queues row-lock waiters so that each is blocked by every waiter ahead of it; drawing
    a waiter under its deepest blocker turns that queue into one readable chain.
    """
    level: dict[int, int] = {}

    def depth(pid: int, seen: frozenset[int]) -> int:
        if pid not in level:
            ahead = [b for b in blocked_by.get(pid, ()) if b not in seen]
            level[pid] = 1 + max((depth(b, seen | {pid}) for b in ahead), default=-1)
        return level[pid]

    return {
        pid: max(blockers, key=lambda b: (depth(b, frozenset({pid})), b))
        for pid, blockers in blocked_by.items() if blockers
    }


def render(tick: Mapping[str, Any], backends: Sequence[Mapping[str, Any]],
           warnings: Sequence[str] = (),
           findings: Sequence[Mapping[str, Any]] | None = None) -> RenderableType:
    """Return the view of one snapshot: metrics line, findings, blocker forest, idle-in-transaction holders.

    ``findings`` is None when no server process is watched with py-spy.
    """
    by_pid = {int(b["pid"]): b for b in backends}
    blocked_by = {int(b["pid"]): list(b["blocked_by"]) for b in backends if b["blocked_by"]}
    drawn_under = parents(blocked_by)
    children: dict[int, list[int]] = {}
    for pid, parent in sorted(drawn_under.items()):
        children.setdefault(parent, []).append(pid)
    parts: list[RenderableType] = [Text(f"Warning: {w}", style="bold red") for w in warnings]
    parts.append(Text(
        f"{time.strftime('%H:%M:%S', time.localtime(tick['t']))}  backends {tick['backends']}  "
        f"blocked {tick['blocked']}  edges {tick['edges']}  depth {tick['depth']}  "
        f"roots {len(tick['roots'])}  idle in tx {tick['idle_in_tx']} "
        f"(oldest {_age(tick['idle_in_tx_max_age'])})  sampler {tick['cost_ms']:.1f} ms, "
        f"{tick['blocking_calls']} pg_blocking_pids calls", style="bold",
    ))
    if findings:
        parts.append(Text("findings", style="bold"))
        parts += [Text(f"  {i}. {f['text']}", style="red") for i, f in enumerate(findings, 1)]
    elif findings is not None:
        parts.append(Text("findings: none (no cross-layer cycle, convoy or idle holder blocked in the app)",
                          style="dim"))
    forest = Tree("blocker forest" if tick["roots"] else "blocker forest: nobody waits on a lock")
    for root in tick["roots"]:
        node = forest.add(_label(by_pid.get(root["pid"]), root["pid"], f"  blocks {root['blocks']}"))
        _add_waiters(node, root["pid"], children, by_pid, {root["pid"]})
    parts.append(forest)
    if tick["locked_relations"]:
        parts.append(Text("root blockers hold locks on: " + ", ".join(tick["locked_relations"])))
    idle = sorted((b for b in backends if b["state"] == "idle in transaction"),
                  key=lambda b: -(b["xact_age"] or 0.0))
    if idle:
        table = Table(title="idle in transaction", title_justify="left")
        for column in ("pid", "xact age", "idle for", "application", "last query"):
            table.add_column(column)
        for b in idle:
            table.add_row(str(b["pid"]), _age(b["xact_age"]), _age(b["state_age"]), b["app"] or "",
                          _query(b["query"]))
        parts.append(table)
    return Group(*parts)


def _add_waiters(node: Tree, pid: int, children: Mapping[int, list[int]],
                 by_pid: Mapping[int, Mapping[str, Any]], seen: set[int]) -> None:
    for waiter in children.get(pid, ()):
        if waiter in seen:
            continue
        seen.add(waiter)
        backend = by_pid.get(waiter)
        event = f"  waits on {backend['wait_event_type']}:{backend['wait_event']}" if backend else ""
        _add_waiters(node.add(_label(backend, waiter, event)), waiter, children, by_pid, seen)


def json_findings(found: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return the findings as ``--json`` lines carry them: kind, threads (pid, tid, function, file,
    line, backend_pid) and text."""
    return [{"kind": f["kind"], "text": f["text"],
             "threads": [{k: t.get(k) for k in THREAD_KEYS} for t in f.get("threads") or ()]}
            for f in found]


class StackWatch:
    """py-spy on the watched server processes, on a thread of its own: the findings of the latest
    moment something waited. The Postgres loop hands it each snapshot and never waits for a dump."""

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
        self._findings: list[dict[str, Any]] = []
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
                self._findings = []
            found = list(self._findings)
        if waits:
            self._wake.set()
        return found

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
                self._findings = record["findings"] if record else []
            self._stop.wait(max(0.0, MIN_DUMP_INTERVAL_S - (time.monotonic() - started)))

    def close(self) -> None:
        """Stop the py-spy thread (a dump in progress ends within py-spy's own timeout)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=15.0)


def watch(dsn: str, *, interval: float = 1.0, as_json: bool = False, out: TextIO | None = None,
          pyspy_pids: Sequence[int] = (), pyspy_pattern: str | None = None,
          dumper: Dumper = pyspy.dump, app_timeouts: Mapping[str, float] | None = None) -> None:
    """Sample ``dsn`` every ``interval`` seconds until Ctrl-C; a live view, or tick records as JSON lines.

    With ``pyspy_pids`` or ``pyspy_pattern`` (a regular expression on command lines), py-spy reads
    those server processes and each snapshot carries the wait-for graph's findings (of the latest
    py-spy round: the dumps run beside the Postgres loop, which keeps its rate; ``late_ms`` of each
    tick says how far behind its due time it began).
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
        ticker = Ticker(interval)
        if as_json:
            for warning in sampler.warnings:
                print(f"Warning: {warning}", file=sys.stderr)
            while True:
                tick, backends = sampler.tick(late_ms=ticker.late_ms())
                found = stacks.update(tick, backends) if stacks else []
                out.write(json.dumps(tick | {"findings": json_findings(found)}, default=str) + "\n")
                out.flush()
                time.sleep(ticker.wait_s())
        console = Console(file=out)
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                tick, backends = sampler.tick(late_ms=ticker.late_ms())
                shown = stacks.update(tick, backends) if stacks else None
                live.update(render(tick, backends, sampler.warnings, shown), refresh=True)
                time.sleep(ticker.wait_s())
    except KeyboardInterrupt:
        return
    finally:
        if stacks is not None:
            stacks.close()
        conn.close()
