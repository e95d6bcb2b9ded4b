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
REDRAW_S = 1.0
"""The live view is drawn when what it shows changed, else once this often (the clock and ages)."""
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
    visiting: set[int] = set()  # on the current path: a cycle is not followed round again

    def depth(pid: int) -> int:
        if pid in level:
            return level[pid]
        if pid in visiting:
            return -1
        visiting.add(pid)
        level[pid] = 1 + max((depth(b) for b in blocked_by.get(pid, ())), default=-1)
        visiting.discard(pid)
        return level[pid]

    return {
        pid: max(blockers, key=lambda b: (depth(b), b))
        for pid, blockers in blocked_by.items() if blockers
    }


def render(tick: Mapping[str, Any], backends: Sequence[Mapping[str, Any]],
           warnings: Sequence[str] = (),
           findings: Sequence[Mapping[str, Any]] | None = None,
           max_lines: int | None = None) -> RenderableType:
    """Return the view of one snapshot: metrics line, findings, blocker forest, idle-in-transaction holders.

    ``findings`` is None when no server process is watched with py-spy. With ``max_lines`` (the
    terminal's height) the forest draws only the nodes that fit, then how many more wait.
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
    drawn = _Room(None if max_lines is None else _forest_lines(max_lines, parts, backends, tick))
    for root in tick["roots"]:
        if drawn.full():
            break
        drawn.add(root=True)
        node = forest.add(_label(by_pid.get(root["pid"]), root["pid"], f"  blocks {root['blocks']}"))
        _add_waiters(node, root["pid"], children, by_pid, {root["pid"]}, drawn)
    more_waiters, more_roots = len(drawn_under) - drawn.waiters, len(tick["roots"]) - drawn.roots
    if more_waiters > 0 or more_roots > 0:
        forest.add(Text(f"… and {more_waiters:,} more waiters"
                        + (f" under {more_roots:,} more roots" if more_roots else "")
                        + " (the terminal is full; --json has them all)", style="dim"))
    parts.append(forest)
    if tick["locked_relations"]:
        parts.append(Text("root blockers hold locks on: " + ", ".join(tick["locked_relations"])))
    idle = sorted((b for b in backends if b["state"] == "idle in transaction"),
                  key=lambda b: -(b["xact_age"] or 0.0))
    if idle:
        shown_idle = idle if max_lines is None else idle[:_idle_rows(max_lines, len(idle))]
        more = len(idle) - len(shown_idle)
        table = Table(title="idle in transaction", title_justify="left",
                      caption=f"… and {more:,} more" if more else None, caption_justify="left")
        for column in ("pid", "xact age", "idle for", "application", "last query"):
            table.add_column(column, no_wrap=True)  # one line a row: its height is known
        for b in shown_idle:
            table.add_row(str(b["pid"]), _age(b["xact_age"]), _age(b["state_age"]), b["app"] or "",
                          _query(b["query"]))
        parts.append(table)
    return Group(*parts)


class _Room:
    """How many forest nodes may still be drawn (None: all), and how many were."""

    def __init__(self, nodes: int | None) -> None:
        self.nodes = nodes
        self.roots = 0
        self.waiters = 0

    def full(self) -> bool:
        return self.nodes is not None and self.roots + self.waiters >= self.nodes

    def add(self, root: bool = False) -> None:
        if root:
            self.roots += 1
        else:
            self.waiters += 1


def _forest_lines(max_lines: int, before: Sequence[RenderableType], backends: Sequence[Mapping[str, Any]],
                  tick: Mapping[str, Any]) -> int:
    """Forest nodes that fit in ``max_lines``: two lines a node, after the lines above the forest and
    those below it (the locked relations, the idle-in-transaction table)."""
    idle = sum(1 for b in backends if b["state"] == "idle in transaction")
    rows = _idle_rows(max_lines, idle)
    below = (1 if tick["locked_relations"] else 0) + (rows + 6 if idle else 0)  # title, borders, caption
    return max(2, (max_lines - len(before) - below - 3) // 2)


def _idle_rows(max_lines: int, idle: int) -> int:
    """Rows of the idle-in-transaction table in a terminal of ``max_lines``: a quarter of it at most."""
    return min(idle, max(3, max_lines // 4))


def _add_waiters(node: Tree, pid: int, children: Mapping[int, list[int]],
                 by_pid: Mapping[int, Mapping[str, Any]], seen: set[int], drawn: _Room) -> None:
    for waiter in children.get(pid, ()):
        if waiter in seen or drawn.full():
            continue
        seen.add(waiter)
        drawn.add()
        backend = by_pid.get(waiter)
        event = f"  waits on {backend['wait_event_type']}:{backend['wait_event']}" if backend else ""
        _add_waiters(node.add(_label(backend, waiter, event)), waiter, children, by_pid, seen, drawn)


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


def _view_key(tick: Mapping[str, Any], backends: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
    """What the view of a snapshot shows, but its clock and ages: equal keys draw the same view."""
    counts = tuple(tick[k] for k in ("backends", "blocked", "edges", "depth", "idle_in_tx"))
    roots = tuple((r["pid"], r["blocks"]) for r in tick["roots"])
    rows = tuple((b["pid"], b["state"], b["wait_event"], b["query"], tuple(b["blocked_by"]))
                 for b in backends)
    return counts, tuple(tick["locked_relations"]), roots, rows


class Budget:
    """The watch's sampler on its CPU budget: the CPU of each tick (reading only, not drawing) goes
    to the Ticker, and ``lowered`` says since when and how far the rate is lowered."""

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker
        self.since: float | None = None

    def tick(self, sampler: PgSampler) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        cpu_at = time.thread_time()
        found = sampler.tick(late_ms=self.ticker.late_ms(), interval_s=self.ticker.interval_s)
        self.ticker.spend(time.thread_time() - cpu_at)
        return found

    def lowered(self, tick: Mapping[str, Any]) -> list[str]:
        """A line while the rate is lowered (none otherwise)."""
        if self.ticker.interval_s <= self.ticker.asked_s:
            self.since = None
            return []
        self.since = self.since or tick["t"]
        return [f"sampler {1 / self.ticker.asked_s:.3g} Hz lowered to {1 / self.ticker.interval_s:.2g} Hz "
                f"since {time.strftime('%H:%M:%S', time.localtime(self.since))} to keep within its CPU "
                f"budget ({self.ticker.cpu_budget_pct:g} % of a core): {tick['backends']:,} backends"]


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
                out.write(json.dumps(tick | {"findings": json_findings(found)}, default=str) + "\n")
                out.flush()
                time.sleep(ticker.wait_s())
        console = Console(file=out)
        with Live(console=console, auto_refresh=False, screen=False) as live:
            drawn: tuple[Any, ...] | None = None
            drawn_at = 0.0
            while True:
                tick, backends = budget.tick(sampler)
                shown = stacks.update(tick, backends) if stacks else None
                warnings = [*sampler.warnings, *budget.lowered(tick)]
                # Drawn when what it shows changed, and every second (the clock and the ages move).
                now, height = time.monotonic(), console.size.height
                view = (_view_key(tick, backends), tuple(warnings), repr(shown), height)
                if view != drawn or now - drawn_at >= REDRAW_S:
                    live.update(render(tick, backends, warnings, shown, max_lines=height), refresh=True)
                    drawn, drawn_at = view, now
                time.sleep(ticker.wait_s())
    except KeyboardInterrupt:
        return
    finally:
        if stacks is not None:
            stacks.close()
        conn.close()
