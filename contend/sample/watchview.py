"""The view of ``contend watch``: one snapshot as lines of styled text, and the screen that draws it
only when what it shows changed.

``render`` is pure: a snapshot in, a ``Lines`` renderable out. The view is drawn as plain lines
(styled segments) rather than a rich Tree and Table: rich measures and lays out every cell of a
Table and every label of a Tree at each refresh, which at 400 backends cost more than the sampler's
own tick (7.3 ms a refresh against 0.6 ms for these lines); the lines read the same (the same
guides, borders, columns and wrapping).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from contend.diagnosis import sqlcomment

QUERY_WIDTH = 100
REDRAW_S = 1.0
"""The live view is drawn when what it shows changed, else once this often (the clock and ages)."""

PLAIN, BOLD, DIM, ITALIC = Style(), Style(bold=True), Style(dim=True), Style(italic=True)
RED, BOLD_RED, YELLOW, GREEN = Style(color="red"), Style(bold=True, color="red"), Style(color="yellow"), \
    Style(color="green")
CYAN, MAGENTA, DIM_ITALIC = Style(color="cyan"), Style(color="magenta"), Style(dim=True, italic=True)
# rich's Tree guides and the HEAVY_HEAD box of its Table, so the view reads as it always did.
BRANCH, LAST, PIPE, SPACE = "├── ", "└── ", "│   ", "    "


class Line:
    """One line of the view: styled pieces after a prefix (a tree's guides). A line wider than the
    terminal wraps under ``cont`` (the guides that continue it), or is cut when ``cont`` is None."""

    __slots__ = ("cells", "cont", "pieces", "prefix")

    def __init__(self, pieces: Sequence[tuple[str, Style]], prefix: str = "", cont: str | None = "") -> None:
        self.prefix, self.pieces, self.cont = prefix, [Segment(t, s) for t, s in pieces if t], cont
        self.cells = len(prefix) + sum(cell_len(s.text) for s in self.pieces)


class Lines:
    """A rich renderable of ``Line``s: drawn as they are, without measuring or laying anything out."""

    def __init__(self, lines: list[Line]) -> None:
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        width, new_line = options.max_width, Segment.line()
        for line in self.lines:
            if line.cells <= width or line.cont is None:  # a cut line: rich crops it at the edge
                if line.prefix:
                    yield Segment(line.prefix)
                yield from line.pieces
            else:
                text = Text.assemble(*((s.text, s.style or PLAIN) for s in line.pieces))
                for i, part in enumerate(text.wrap(console, max(1, width - len(line.prefix)))):
                    if i:
                        yield new_line
                    yield Segment(line.prefix if i == 0 else line.cont)
                    yield from part.render(console, end="")
            yield new_line


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


_queries: dict[str, str] = {}


def _query(text: str | None) -> str:
    """The query on one line, cut to QUERY_WIDTH (kept across ticks: most backends' queries stay)."""
    if not text:
        return ""
    short = _queries.get(text)
    if short is None:
        if len(_queries) > 4096:
            _queries.clear()
        short = _queries[text] = " ".join(text.split())[:QUERY_WIDTH]
    return short


def _label(backend: Mapping[str, Any] | None, pid: int, extra: str = "",
           thread: Mapping[str, Any] | None = None) -> list[list[tuple[str, Style]]]:
    """The lines of a backend's node: pid, state, transaction age, application; query; code; thread."""
    if backend is None:
        return [[(f"pid {pid}  (not in this database){extra}", DIM)]]
    state = backend["state"]  # all in bold, the parts in colour
    lines = [[(f"pid {pid} ", BOLD), (f"{state or '?'}", BOLD + (YELLOW if state != "active" else GREEN)),
              (f"  xact {_age(backend['xact_age'])}  {backend['app'] or ''}{extra}", BOLD)],
             [(_query(backend["query"]), BOLD + CYAN)]]
    code = sqlcomment.words(backend.get("comment"))
    if code:
        lines.append([(code, BOLD + MAGENTA)])
    if thread is not None:
        lines.append([(thread_words(thread), BOLD + DIM)])
    return lines


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
    queues = Queues(blocked_by)
    return {pid: queues.parent(pid) for pid, blockers in blocked_by.items() if blockers}


class Queues:
    """The waiters to draw under each backend (``parents``), worked out only for the backends drawn:
    a terminal shows a few queues of the hundreds a big server may have."""

    def __init__(self, blocked_by: Mapping[int, Sequence[int]]) -> None:
        self.blocked_by = blocked_by
        self.level: dict[int, int] = {}
        self.visiting: set[int] = set()  # on the current path: a cycle is not followed round again
        self.parents: dict[int, int] = {}
        self.waiters: dict[int, set[int]] = {}  # blocker -> the waiters it blocks
        for pid, blockers in blocked_by.items():
            for b in blockers:
                self.waiters.setdefault(b, set()).add(pid)

    def depth(self, pid: int) -> int:
        if pid in self.level:
            return self.level[pid]
        if pid in self.visiting:
            return -1
        self.visiting.add(pid)
        self.level[pid] = 1 + max((self.depth(b) for b in self.blocked_by.get(pid, ())), default=-1)
        self.visiting.discard(pid)
        return self.level[pid]

    def parent(self, pid: int) -> int:
        """The blocker of waiter ``pid`` to draw it under."""
        if pid not in self.parents:
            blockers = self.blocked_by[pid]
            for b in blockers:
                self.depth(b)
            self.parents[pid] = max(blockers, key=lambda b: (self.level[b], b))
        return self.parents[pid]

    def children(self, pid: int) -> list[int]:
        """The waiters drawn under ``pid``, by pid."""
        return sorted(w for w in self.waiters.get(pid, ()) if self.parent(w) == pid)


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


class _Node:
    """A node of the forest before it is drawn: its label's lines and its children."""

    __slots__ = ("children", "label")

    def __init__(self, label: list[list[tuple[str, Style]]]) -> None:
        self.label = label
        self.children: list[_Node] = []

    def add(self, label: list[list[tuple[str, Style]]]) -> _Node:
        self.children.append(child := _Node(label))
        return child

    def draw(self, out: list[Line], guides: str = "", last: bool = True, root: bool = True) -> None:
        """Append this node's lines and its children's, with rich Tree's guides."""
        head = "" if root else guides + (LAST if last else BRANCH)
        below = guides if root else guides + (SPACE if last else PIPE)
        for i, pieces in enumerate(self.label):
            out.append(Line(pieces, head if i == 0 else below, below))
        for i, child in enumerate(self.children):
            child.draw(out, below, i == len(self.children) - 1, root=False)


def render(tick: Mapping[str, Any], backends: Sequence[Mapping[str, Any]],
           warnings: Sequence[str] = (),
           findings: Sequence[Mapping[str, Any]] | None = None,
           graph: Mapping[str, Any] | None = None,
           mapping: Mapping[str, Any] | None = None,
           threads: Mapping[int, Mapping[str, Any]] | None = None,
           max_lines: int | None = None) -> Lines:
    """Return the view of one snapshot: metrics line, findings, how backends were mapped to threads,
    blocker forest with the Python waits beside the Postgres ones, idle-in-transaction holders.

    ``findings`` is None when no server process is watched with py-spy; a finding's ``line`` (when
    set) says when it first appeared and how often it has been seen. ``graph`` is the wait-for graph
    record of the latest stacks; its ``mapping`` and the thread it placed each backend on are shown
    unless ``mapping`` and ``threads`` (backend pid -> thread) are given. With ``max_lines`` (the
    terminal's height) the forest draws only the nodes that fit, then how many more wait, and the
    idle-in-transaction table a quarter of the terminal at most.
    """
    if mapping is None and graph is not None:
        mapping = graph.get("mapping")
    if threads is None:
        threads = backend_threads(graph)
    by_pid = {int(b["pid"]): b for b in backends}
    blocked_by = {int(b["pid"]): list(b["blocked_by"]) for b in backends if b["blocked_by"]}
    queues = Queues(blocked_by)
    lines = [Line([(f"Warning: {w}", BOLD_RED)]) for w in warnings]
    lines.append(Line([(
        f"{time.strftime('%H:%M:%S', time.localtime(tick['t']))}  backends {tick['backends']}  "
        f"blocked {tick['blocked']}  edges {tick['edges']}  depth {tick['depth']}  "
        f"roots {len(tick['roots'])}  idle in tx {tick['idle_in_tx']} "
        f"(oldest {_age(tick['idle_in_tx_max_age'])})  sampler {tick['cost_ms']:.1f} ms, "
        f"{tick['blocking_calls']} pg_blocking_pids calls", BOLD)]))
    if findings:
        lines.append(Line([("findings", BOLD)]))
        for i, found in enumerate(findings, 1):
            words = found.get("short") or found["text"]
            said = f"  {i}. {found['line']}: {words}" if found.get("line") else f"  {i}. {words}"
            lines.append(Line([(said, RED)]))
            lines += [Line([(f"     {line}", DIM)]) for line in finding_details(found)]
    elif findings is not None:
        lines.append(Line([("findings: none (no cross-layer cycle, convoy or idle holder blocked in the app)",
                            DIM)]))
    if mapping:
        first, *rest = mapping_lines(mapping)
        lines += [Line([(first, DIM)]), *(Line([(line, YELLOW)]) for line in rest)]
    idle = sorted((b for b in backends if b["state"] == "idle in transaction"),
                  key=lambda b: -(b["xact_age"] or 0.0))
    shown_idle = idle if max_lines is None else idle[:_idle_rows(max_lines, len(idle))]
    title = "blocker forest" if tick["roots"] else "blocker forest: nobody waits on a lock"
    forest = _Node([[(title, PLAIN)]])
    python: dict[int | None, list[str]] = {}
    for backend_pid, words in python_waits(graph):
        python.setdefault(backend_pid, []).append(words)
    drawn: set[int] = set()
    room = _Room(None if max_lines is None else _forest_lines(max_lines, len(lines), len(shown_idle),
                                                              len(idle), tick))
    for root in tick["roots"]:
        if room.full():
            break
        room.add(root=True)
        node = forest.add(_label(by_pid.get(root["pid"]), root["pid"], f"  blocks {root['blocks']}",
                                 threads.get(root["pid"])))
        _python(node, python.get(root["pid"]))
        drawn.add(root["pid"])
        _add_waiters(node, root["pid"], queues, by_pid, threads, {root["pid"]}, python, drawn, room)
    more_waiters, more_roots = len(blocked_by) - room.waiters, len(tick["roots"]) - room.roots
    if more_waiters > 0 or more_roots > 0:
        forest.add([[(f"… and {more_waiters:,} more waiters"
                      + (f" under {more_roots:,} more roots" if more_roots else "")
                      + " (the terminal is full; --json has them all)", DIM)]])
    for backend_pid, waits in python.items():  # Python waits of threads the forest does not show
        if backend_pid not in drawn and not room.full():
            _python(forest, waits)
    forest.draw(lines)
    if tick["locked_relations"]:
        lines.append(Line([("root blockers hold locks on: " + ", ".join(tick["locked_relations"]), PLAIN)]))
    if idle:
        lines += _idle_table(shown_idle, len(idle) - len(shown_idle))
    return Lines(lines)


def _idle_table(rows: Sequence[Mapping[str, Any]], more: int) -> list[Line]:
    """The idle-in-transaction holders as rich's Table draws them (HEAVY_HEAD box, one line a row)."""
    cells = [("pid", "xact age", "idle for", "application", "last query")]
    cells += [(str(b["pid"]), _age(b["xact_age"]), _age(b["state_age"]), b["app"] or "", _query(b["query"]))
              for b in rows]
    widths = [max(cell_len(row[c]) for row in cells) for c in range(5)]

    def row(values: Sequence[str], bar: str) -> str:
        padded = (f" {v}{' ' * (w - cell_len(v))} " for v, w in zip(values, widths, strict=True))
        return bar + bar.join(padded) + bar

    def header() -> Line:  # bold names between plain borders
        pieces = [("┃", PLAIN)]
        for v, w in zip(cells[0], widths, strict=True):
            pieces += [(" ", PLAIN), (v, BOLD), (" " * (w - cell_len(v) + 1) + "┃", PLAIN)]
        return Line(pieces, cont=None)

    def rule(left: str, fill: str, mid: str, right: str) -> Line:
        return Line([(left + mid.join(fill * (w + 2) for w in widths) + right, PLAIN)], cont=None)

    out = [Line([("idle in transaction", ITALIC)], cont=None), rule("┏", "━", "┳", "┓"),
           header(), rule("┡", "━", "╇", "┩")]
    out += [Line([(row(values, "│"), PLAIN)], cont=None) for values in cells[1:]]
    out.append(rule("└", "─", "┴", "┘"))
    if more:
        out.append(Line([(f"… and {more:,} more", DIM_ITALIC)], cont=None))
    return out


def backend_threads(graph: Mapping[str, Any] | None) -> dict[int, Mapping[str, Any]]:
    """Return backend pid -> the thread a wait-for graph record placed it on."""
    threads = (graph or {}).get("threads") or {}
    return {int(t["backend_pid"]): t for t in threads.values() if t.get("backend_pid") is not None}


def _python(node: _Node, lines: Sequence[str] | None) -> None:
    for line in lines or ():
        node.add([[(line, MAGENTA)]])


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


def _forest_lines(max_lines: int, before: int, rows: int, idle: int, tick: Mapping[str, Any]) -> int:
    """Forest nodes that fit in ``max_lines``: two lines a node, after the ``before`` lines above the
    forest and those below it (the locked relations, the idle-in-transaction table of ``rows``)."""
    below = (1 if tick["locked_relations"] else 0) + (rows + 6 if idle else 0)  # title, borders, caption
    return max(2, (max_lines - before - below - 3) // 2)


def _idle_rows(max_lines: int, idle: int) -> int:
    """Rows of the idle-in-transaction table in a terminal of ``max_lines``: a quarter of it at most."""
    return min(idle, max(3, max_lines // 4))


def _add_waiters(node: _Node, pid: int, queues: Queues,
                 by_pid: Mapping[int, Mapping[str, Any]], threads: Mapping[int, Mapping[str, Any]],
                 seen: set[int], python: Mapping[int | None, list[str]], drawn: set[int],
                 room: _Room) -> None:
    for waiter in queues.children(pid):
        if waiter in seen or room.full():
            continue
        seen.add(waiter)
        drawn.add(waiter)
        room.add()
        backend = by_pid.get(waiter)
        event = f"  waits on {backend['wait_event_type']}:{backend['wait_event']}" if backend else ""
        child = node.add(_label(backend, waiter, event, threads.get(waiter)))
        _python(child, python.get(waiter))
        _add_waiters(child, waiter, queues, by_pid, threads, seen, python, drawn, room)


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


class Screen:
    """What the live view last drew: a snapshot that shows the same draws nothing, unless a second
    went by (the clock and the ages move; within half a tick, so a 1 s interval redraws every tick)."""

    def __init__(self, interval: float, clock: Any = time.monotonic) -> None:
        self.due_s = REDRAW_S - interval / 2
        self.clock = clock
        self.shown: tuple[Any, ...] | None = None
        self.drawn_at = 0.0

    def frame(self, tick: Mapping[str, Any], backends: Sequence[Mapping[str, Any]], warnings: Sequence[str],
              findings: Sequence[Mapping[str, Any]] | None, graph: Mapping[str, Any] | None,
              height: int) -> Lines | None:
        """Return the view to draw, or None when the one drawn last still shows this snapshot."""
        now = self.clock()
        shown = (view_key(tick, backends), tuple(warnings), repr(findings), repr(graph), height)
        if shown == self.shown and now - self.drawn_at < self.due_s:
            return None
        self.shown, self.drawn_at = shown, now
        return render(tick, backends, warnings, findings, graph, max_lines=height)


def view_key(tick: Mapping[str, Any], backends: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
    """What the view of a snapshot shows, but its clock and ages: equal keys draw the same view."""
    counts = tuple(tick[k] for k in ("backends", "blocked", "edges", "depth", "idle_in_tx"))
    roots = tuple((r["pid"], r["blocks"]) for r in tick["roots"])
    rows = tuple((b["pid"], b["state"], b["wait_event"], b["query"], tuple(b["blocked_by"]))
                 for b in backends)
    return counts, tuple(tick["locked_relations"]), roots, rows
