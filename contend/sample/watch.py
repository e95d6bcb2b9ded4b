"""``contend watch``: a live view of the blocker forest of any Postgres, or its tick metrics as JSON.

Rendering is pure (``render`` turns one snapshot into rich renderables); ``watch`` is the thin
loop around it. Read-only: the sampler's connection runs with ``default_transaction_read_only``.
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

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from contend.diagnosis import sqlcomment
from contend.errors import SamplerError
from contend.live import LiveFinding
from contend.sample import pyspy
from contend.sample.attribution import pids_matching
from contend.sample.crosslayer import CrossLayer, Dumper
from contend.sample.pg import PgSampler, Ticker, connect, session_timeouts
from contend.sample.ticker import Budget

QUERY_WIDTH = 100
MIN_DUMP_INTERVAL_S = 1.0
REDRAW_S = 1.0
"""The live view is drawn when what it shows changed, else once this often (the clock and ages)."""
THREAD_KEYS = ("pid", "tid", "function", "file", "line", "backend_pid", "mapped_by", "comment")


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def _query(text: str | None) -> str:
    return " ".join((text or "").split())[:QUERY_WIDTH]


def _label(backend: Mapping[str, Any] | None, pid: int, extra: str = "",
           thread: Mapping[str, Any] | None = None) -> Text:
    if backend is None:
        return Text(f"pid {pid}  (not in this database){extra}", style="dim")
    label = Text(f"pid {pid} ", style="bold")
    label.append(f"{backend['state'] or '?'}", style="yellow" if backend["state"] != "active" else "green")
    label.append(f"  xact {_age(backend['xact_age'])}  {backend['app'] or ''}{extra}\n")
    label.append(_query(backend["query"]), style="cyan")
    code = sqlcomment.words(backend.get("comment"))
    if code:
        label.append(f"\n{code}", style="magenta")
    if thread is not None:
        label.append(f"\n{thread_words(thread)}", style="dim")
    return label


def thread_words(thread: Mapping[str, Any]) -> str:
    """Say which thread holds a backend, and how that is known: ``thread 12 of pid 7 in `save` (socket)``."""
    n = len(thread.get("candidates") or ())
    if thread.get("tid") is None and n:
        return f"thread: one of {n} candidates of pid {thread.get('pid')} (elimination)"
    if thread.get("tid") is None:
        return "thread not known"
    return (f"thread {thread['tid']} of pid {thread.get('pid')} in `{thread.get('function')}` "
            f"({thread.get('mapped_by') or 'not mapped'})")


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


def _thread_words(thread: Mapping[str, Any] | None) -> str:
    if not thread:
        return "an unknown holder"
    backend = f", backend {thread['backend_pid']}" if thread.get("backend_pid") else ""
    where = f"thread {thread.get('tid')} of pid {thread.get('pid')}{backend}"
    return f"`{thread.get('function') or '?'}` ({where})"


def python_waits(graph: Mapping[str, Any] | None) -> list[tuple[int | None, str]]:
    """Return each Python edge of a wait-for graph record as (the waiter's backend pid, words):
    ``python: `job_result` (thread ...) waits for the lock of logging handler JobLogHandler, held by
    `_cachalot` (thread ...)``."""
    if not graph:
        return []
    threads = graph.get("threads") or {}
    out = []
    for edge in graph.get("edges") or ():
        if edge.get("layer") != "python":
            continue
        waiter = threads.get(edge["waiter"]) or {}
        holder = threads.get(edge["holder"]) if edge.get("holder") else None
        out.append((waiter.get("backend_pid"), f"python: {_thread_words(waiter)} waits for {edge['what']}, "
                                              f"held by {_thread_words(holder)}"))
    return out


def render(tick: Mapping[str, Any], backends: Sequence[Mapping[str, Any]],
           warnings: Sequence[str] = (),
           findings: Sequence[Mapping[str, Any]] | None = None,
           graph: Mapping[str, Any] | None = None,
           mapping: Mapping[str, Any] | None = None,
           threads: Mapping[int, Mapping[str, Any]] | None = None,
           max_lines: int | None = None) -> RenderableType:
    """Return the view of one snapshot: metrics line, findings, how backends were mapped to threads,
    blocker forest with the Python waits beside the Postgres ones, idle-in-transaction holders.

    ``findings`` is None when no server process is watched with py-spy; a finding's ``line`` (when
    set) says when it first appeared and how often it has been seen. ``graph`` is the wait-for graph
    record of the latest stacks; its ``mapping`` and the thread it placed each backend on are shown
    unless ``mapping`` and ``threads`` (backend pid -> thread) are given. With ``max_lines`` (the
    terminal's height) the forest draws only the nodes that fit, then how many more wait.
    """
    if mapping is None and graph is not None:
        mapping = graph.get("mapping")
    if threads is None:
        threads = backend_threads(graph)
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
        for i, found in enumerate(findings, 1):
            words = found.get("short") or found["text"]
            parts.append(Text(f"  {i}. {found['line']}: {words}" if found.get("line") else f"  {i}. {words}",
                              style="red"))
            parts += [Text(f"     {line}", style="dim") for line in finding_details(found)]
    elif findings is not None:
        parts.append(Text("findings: none (no cross-layer cycle, convoy or idle holder blocked in the app)",
                          style="dim"))
    if mapping:
        lines = mapping_lines(mapping)
        parts += [Text(lines[0], style="dim"), *(Text(line, style="yellow") for line in lines[1:])]
    forest = Tree("blocker forest" if tick["roots"] else "blocker forest: nobody waits on a lock")
    python: dict[int | None, list[str]] = {}
    for backend_pid, words in python_waits(graph):
        python.setdefault(backend_pid, []).append(words)
    drawn: set[int] = set()
    room = _Room(None if max_lines is None else _forest_lines(max_lines, parts, backends, tick))
    for root in tick["roots"]:
        if room.full():
            break
        room.add(root=True)
        node = forest.add(_label(by_pid.get(root["pid"]), root["pid"], f"  blocks {root['blocks']}",
                                 threads.get(root["pid"])))
        _python(node, python.get(root["pid"]))
        drawn.add(root["pid"])
        _add_waiters(node, root["pid"], children, by_pid, threads, {root["pid"]}, python, drawn, room)
    more_waiters, more_roots = len(drawn_under) - room.waiters, len(tick["roots"]) - room.roots
    if more_waiters > 0 or more_roots > 0:
        forest.add(Text(f"… and {more_waiters:,} more waiters"
                        + (f" under {more_roots:,} more roots" if more_roots else "")
                        + " (the terminal is full; --json has them all)", style="dim"))
    for backend_pid, lines in python.items():  # Python waits of threads the forest does not show
        if backend_pid not in drawn and not room.full():
            _python(forest, lines)
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


def backend_threads(graph: Mapping[str, Any] | None) -> dict[int, Mapping[str, Any]]:
    """Return backend pid -> the thread a wait-for graph record placed it on."""
    threads = (graph or {}).get("threads") or {}
    return {int(t["backend_pid"]): t for t in threads.values() if t.get("backend_pid") is not None}


def _python(node: Tree, lines: Sequence[str] | None) -> None:
    for line in lines or ():
        node.add(Text(line, style="magenta"))


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
                 by_pid: Mapping[int, Mapping[str, Any]], threads: Mapping[int, Mapping[str, Any]],
                 seen: set[int], python: Mapping[int | None, list[str]], drawn: set[int],
                 room: _Room) -> None:
    for waiter in children.get(pid, ()):
        if waiter in seen or room.full():
            continue
        seen.add(waiter)
        drawn.add(waiter)
        room.add()
        backend = by_pid.get(waiter)
        event = f"  waits on {backend['wait_event_type']}:{backend['wait_event']}" if backend else ""
        child = node.add(_label(backend, waiter, event, threads.get(waiter)))
        _python(child, python.get(waiter))
        _add_waiters(child, waiter, children, by_pid, threads, seen, python, drawn, room)


def finding_details(found: Mapping[str, Any]) -> list[str]:
    """Return the lines under a finding: an inferred one's candidates, each backend's thread evidence
    and its sqlcommenter code."""
    lines = []
    if found.get("proof") == "inferred":
        for c in found.get("candidates") or ():
            tids = ", ".join(str(t.get("tid")) for t in c["candidates"])
            lines.append(f"inferred: backend {c['backend_pid']} is held by one of threads {tids}")
    for thread in found.get("threads") or ():
        if thread.get("backend_pid") is None:
            continue
        how = f"mapped by {thread['mapped_by']}" if thread.get("mapped_by") else "thread not known"
        code = sqlcomment.words(thread.get("comment"))
        lines.append(f"backend {thread['backend_pid']}: {how}" + (f"; {code}" if code else ""))
    return lines


def mapping_lines(mapping: Mapping[str, Any]) -> list[str]:
    """Return how the backends of the dumped processes were mapped, then each wait left open for lack
    of a mapping and each thing the socket evidence could not read."""
    lines = [f"mapping: {mapping['text']}"]
    lines += [f"  open: {gap}" for gap in mapping.get("open") or ()]
    lines += [f"  socket evidence: {problem}" for problem in mapping.get("problems") or ()]
    return lines


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


def _view_key(tick: Mapping[str, Any], backends: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
    """What the view of a snapshot shows, but its clock and ages: equal keys draw the same view."""
    counts = tuple(tick[k] for k in ("backends", "blocked", "edges", "depth", "idle_in_tx"))
    roots = tuple((r["pid"], r["blocks"]) for r in tick["roots"])
    rows = tuple((b["pid"], b["state"], b["wait_event"], b["query"], tuple(b["blocked_by"]))
                 for b in backends)
    return counts, tuple(tick["locked_relations"]), roots, rows


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
        with Live(console=console, auto_refresh=False, screen=False) as live:
            drawn: tuple[Any, ...] | None = None
            drawn_at = 0.0
            while True:
                tick, backends = budget.tick(sampler)
                shown = stacks.update(tick, backends) if stacks else None
                warnings = [*sampler.warnings, *budget.lowered(tick)]
                # Drawn when what it shows changed, and every second (the clock and the ages move).
                now, height = time.monotonic(), console.size.height
                graph = stacks.graph if stacks else None
                view = (_view_key(tick, backends), tuple(warnings), repr(shown), repr(graph), height)
                if view != drawn or now - drawn_at >= REDRAW_S:
                    live.update(render(tick, backends, warnings, shown, graph, max_lines=height),
                                refresh=True)
                    drawn, drawn_at = view, now
                time.sleep(ticker.wait_s())
    except KeyboardInterrupt:
        return
    finally:
        if stacks is not None:
            stacks.close()
        conn.close()
