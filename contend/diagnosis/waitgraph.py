"""The wait-for graph over server threads: Python waits and Postgres lock waits in one graph.

Pure but for reading source files (through ``Sources``, which a test can replace): it takes the
py-spy dumps of server processes taken at one moment (``pyspy.parse_dump``, with locals when they
were captured), the backend rows of the Postgres snapshot nearest to them (``pg_backends`` records)
and the client of each backend (``attribution.resolve_client``), and returns a ``Graph``.

Edges go from a waiting thread to the thread it waits for:

* database edges: backend b waits for backend a (``pg_blocking_pids``), each backend mapped to the
  thread whose ``application_name`` names it, else to its process (the socket table reaches a
  process, not a thread);
* Python edges: thread W waits to take a lock that thread H holds. The lock is found in the source
  on disk: a thread stopped (py-spy: not active) on the line of ``with <expr>:`` or of
  ``<expr>.acquire(...)`` waits for ``<expr>``; a frame on a line inside that ``with`` block, or
  after the ``acquire`` and up to its ``release`` in the same function, holds it. ``<expr>`` is a
  name or an attribute chain (``LOCK``, ``self._lock``): a call (``with transaction.atomic():``) is
  never read as a lock. logging's ``Handler.handle`` takes the handler's lock through
  ``self.acquire()``, so there ``self`` stands for ``self.lock``. With locals, the lock is the object
  at the address of the expression's first name plus the rest of the chain, exact across files and
  instances; a first name that is not a local is a module global, named by file and expression.
  Without locals, it is named by file and expression only, and a holder is inferred only when
  exactly one thread of that process holds such an expression (docs/metrics.md);
* waits without a holder: ``Condition.wait``, ``queue.Queue`` ``get``/``put``, ``Event.wait``,
  ``concurrent.futures`` results and ``Thread.join`` wait for another thread to act, not for a lock
  one holds: their edge points to the unknown holder.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contend.diagnosis.clients import Client

LIBRARY_MARKS = ("site-packages", "dist-packages", "/lib/python3", "<")
_PSYCOPG = ("/psycopg/", "/psycopg_binary/", "/psycopg_c/", "/psycopg2/")
_SOCKET = ("/socket.py", "/selectors.py", "/ssl.py", "/select.py", "/asyncio/", "/http/client.py")
UNKNOWN = "unknown holder"

Frame = Mapping[str, Any]


def is_library(filename: str) -> bool:
    """Tell whether a frame's file is the standard library or an installed package."""
    return any(mark in filename for mark in LIBRARY_MARKS)


def _endswith(frame: Frame, *suffixes: str) -> bool:
    return str(frame.get("filename") or "").endswith(suffixes)


# --- what the source says ------------------------------------------------------------------------


@dataclass(frozen=True)
class LockSites:
    """The lock constructs of one source file, by line."""

    waits: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Line -> lock expressions a thread stopped on this line is taking."""
    holds: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Line -> lock expressions held by a frame on this line."""


def _chain(node: ast.expr) -> str | None:
    """Return ``a.b.c`` for a name or attribute chain, else None (a call is never a lock)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _chain(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def _method_calls(function: ast.AST, method: str) -> list[tuple[int, str]]:
    """Return (line, receiver) of ``<receiver>.<method>(...)`` calls in a function, nested ones excluded."""
    found = []
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method:
            receiver = _chain(node.func.value)
            if receiver is not None:
                found.append((node.lineno, receiver))
        stack.extend(ast.iter_child_nodes(node))
    return sorted(found)


def parse_lock_sites(text: str, aliases: Mapping[str, str] | None = None) -> LockSites:
    """Return the ``with <lock>:`` blocks and ``acquire()``/``release()`` spans of a module's source."""
    aliases = aliases or {}
    waits: dict[int, list[str]] = {}
    holds: dict[int, list[str]] = {}
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            exprs = [e for e in (_chain(item.context_expr) for item in node.items) if e]
            if not exprs or not node.body:
                continue
            body_start = node.body[0].lineno
            for line in range(node.lineno, body_start):
                waits.setdefault(line, []).extend(exprs)
            for line in range(body_start, (node.end_lineno or body_start) + 1):
                holds.setdefault(line, []).extend(exprs)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            releases = [(line, aliases.get(e, e)) for line, e in _method_calls(node, "release")]
            end = node.end_lineno or node.lineno
            for line, receiver in _method_calls(node, "acquire"):
                expr = aliases.get(receiver, receiver)
                waits.setdefault(line, []).append(expr)
                until = min((r for r, e in releases if e == expr and r > line), default=end)
                for held in range(line + 1, until + 1):
                    holds.setdefault(held, []).append(expr)
    return LockSites(
        waits={line: tuple(dict.fromkeys(e)) for line, e in waits.items()},
        holds={line: tuple(dict.fromkeys(e)) for line, e in holds.items()},
    )


def _aliases(filename: str) -> dict[str, str]:
    # logging.Handler.handle takes the handler's lock through self.acquire()/self.release().
    return {"self": "self.lock"} if filename.endswith(os.path.join("logging", "__init__.py")) else {}


class Sources:
    """Parses each source file once (again when it changes); unreadable files have no lock sites."""

    def __init__(self, read: Callable[[str], str] | None = None) -> None:
        self._read = read or _read_text
        self._cache: dict[tuple[str, float], LockSites] = {}

    def sites(self, filename: str) -> LockSites:
        try:
            stamp = os.stat(filename).st_mtime if self._read is _read_text else 0.0
            key = (filename, stamp)
            if key not in self._cache:
                self._cache[key] = parse_lock_sites(self._read(filename), _aliases(filename))
            return self._cache[key]
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
            return LockSites()


def _read_text(filename: str) -> str:
    with open(filename, encoding="utf-8") as f:
        return f.read()


# --- the graph -----------------------------------------------------------------------------------


@dataclass
class ThreadNode:
    """One server thread (or, when attribution reaches only a process, one backend of it)."""

    key: str
    pid: int | None
    tid: int | None
    name: str | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    active: bool = False
    backend: dict[str, Any] | None = None
    """The backend row of the thread's connection with the oldest open transaction, if any."""

    def site(self) -> dict[str, Any]:
        """Return where the thread is: its innermost own-code frame (else its innermost frame), and
        ``path``, the three innermost own-code functions, outermost first."""
        own = [f for f in self.frames if not is_library(str(f.get("filename") or ""))]
        frame = own[0] if own else (self.frames[0] if self.frames else {})
        return {
            "pid": self.pid, "tid": self.tid, "name": self.name,
            "backend_pid": self.backend["pid"] if self.backend else None,
            "function": frame.get("name"), "file": frame.get("filename"), "line": frame.get("line"),
            "path": " -> ".join(str(f.get("name")) for f in reversed(own[:3])),
        }

    @property
    def in_transaction(self) -> bool:
        return bool(self.backend and self.backend.get("xact_age") is not None)

    @property
    def idle_in_transaction(self) -> bool:
        return bool(self.backend and str(self.backend.get("state") or "").startswith("idle in transaction"))


@dataclass(frozen=True)
class Edge:
    """``waiter`` waits for ``holder`` (a thread key, or None for the unknown holder)."""

    waiter: str
    holder: str | None
    layer: str
    """``python`` or ``db``."""
    kind: str
    """``lock``, ``handler lock``, ``condition``, ``queue``, ``event``, ``future``, ``join``, ``row lock``."""
    what: str
    """The thing waited for, in words: "the lock of logging handler JobLogHandler"."""
    lock: str | None = None
    """A stable identity of the Python lock (pid, object address or file and expression)."""
    inferred: str = ""
    """How the holder was found, or why it could not be."""

    def record(self) -> dict[str, Any]:
        return {"waiter": self.waiter, "holder": self.holder, "layer": self.layer, "kind": self.kind,
                "what": self.what, "lock": self.lock, "inferred": self.inferred}


@dataclass
class Graph:
    """The wait-for graph of one moment."""

    t: float
    nodes: dict[str, ThreadNode]
    edges: list[Edge]
    with_locals: bool

    def out(self, key: str) -> list[Edge]:
        return [e for e in self.edges if e.waiter == key]

    def into(self, key: str) -> list[Edge]:
        return [e for e in self.edges if e.holder == key]

    def record(self) -> dict[str, Any]:
        """Return the graph as a JSON-able record (nodes that take part in an edge or hold a transaction)."""
        used = {e.waiter for e in self.edges} | {e.holder for e in self.edges if e.holder}
        used |= {k for k, n in self.nodes.items() if n.idle_in_transaction}
        return {
            "t": self.t,
            "locals": self.with_locals,
            "threads": {k: self.nodes[k].site() | {
                "idle_in_tx_s": _xact_age(self.nodes[k]) if self.nodes[k].idle_in_transaction else None,
            } for k in sorted(used)},
            "edges": [e.record() for e in self.edges],
        }


def _xact_age(node: ThreadNode) -> float | None:
    age = node.backend.get("xact_age") if node.backend else None
    return None if age is None else round(float(age), 3)


def thread_key(pid: int, tid: int | None) -> str:
    return f"{pid}:{tid}"


def build(
    t: float,
    dumps: Iterable[Mapping[str, Any]],
    backends: Iterable[Mapping[str, Any]],
    clients: Mapping[int, Client | None],
    sources: Sources | None = None,
) -> Graph:
    """Return the wait-for graph of one moment.

    ``dumps`` are ``pyspy.jsonl`` records (``pid``, ``threads``); ``backends`` the ``pg_backends``
    records of one Postgres snapshot; ``clients`` maps a backend pid to its client (or None).
    """
    sources = sources or Sources()
    nodes: dict[str, ThreadNode] = {}
    by_native: dict[tuple[int, int], str] = {}
    by_ident: dict[tuple[int, int], str] = {}
    with_locals = False
    for dump in dumps:
        pid = int(dump["pid"])
        for thread in dump.get("threads") or ():
            native = thread.get("os_thread_id")
            key = thread_key(pid, native if native is not None else thread.get("thread_id"))
            frames = list(thread.get("frames") or ())
            with_locals = with_locals or any("locals" in f for f in frames)
            nodes[key] = ThreadNode(key, pid, native, thread.get("name"), frames, bool(thread.get("active")))
            if native is not None:
                by_native[(pid, int(native))] = key
            if thread.get("thread_id") is not None:
                by_ident[(pid, int(thread["thread_id"]))] = key

    backend_rows = {int(b["pid"]): b for b in backends}
    blockers = {int(b) for row in backend_rows.values() for b in row.get("blocked_by") or ()}
    node_of_backend: dict[int, str] = {}
    for bpid, row in backend_rows.items():
        client = clients.get(bpid)
        found: str | None = None
        if client is not None and client.native_thread_id is not None:
            found = by_native.get((client.pid, client.native_thread_id))
        if found is None and client is not None and client.thread_id is not None:
            found = by_ident.get((client.pid, client.thread_id))
        if found is None and client is not None and client.native_thread_id is not None:
            # A thread of a process not dumped at this moment: named by its application_name, so
            # it is the same node as in the graph of a moment its process was dumped.
            found = thread_key(client.pid, client.native_thread_id)
            if found not in nodes and (row.get("blocked_by") or bpid in blockers):
                nodes[found] = ThreadNode(found, client.pid, client.native_thread_id)
        if found is None or found not in nodes:
            if client is None and not row.get("blocked_by") and bpid not in blockers:
                continue
            if client is not None and client.native_thread_id is not None:
                continue  # named, but neither dumped nor waiting: nothing to draw
            found = f"backend:{bpid}"
            nodes.setdefault(found, ThreadNode(found, client.pid if client else None, None))
        node_of_backend[bpid] = found
        node = nodes[found]
        if node.backend is None or (row.get("xact_age") or -1.0) > (node.backend.get("xact_age") or -1.0):
            node.backend = dict(row)

    edges = _python_edges(nodes, sources)
    for bpid, row in backend_rows.items():
        for blocker in row.get("blocked_by") or ():
            waiter, holder = node_of_backend.get(bpid), node_of_backend.get(int(blocker))
            if waiter is None or waiter == holder:
                continue
            edges.append(Edge(waiter, holder, "db", "row lock", f"a lock held by backend {blocker}",
                              inferred="pg_blocking_pids"))
    return Graph(t, nodes, edges, with_locals)


def _local_addr(frame: Frame, name: str) -> int | None:
    for var in frame.get("locals") or ():
        if var.get("name") == name and var.get("addr") is not None:
            return int(var["addr"])
    return None


def _local_repr(frame: Frame, name: str) -> str | None:
    for var in frame.get("locals") or ():
        if var.get("name") == name:
            return str(var.get("repr") or "") or None
    return None


def lock_identity(pid: int, frame: Frame, expr: str) -> tuple[str, bool]:
    """Return (identity of the lock ``expr`` names in ``frame``, whether it is exact)."""
    root, _, rest = expr.partition(".")
    addr = _local_addr(frame, root)
    if addr is not None:
        return f"{pid}:0x{addr:x}{'.' + rest if rest else ''}", True
    if "locals" in frame:  # captured, and the name is not among them: a module global
        return f"{pid}:{frame.get('filename')}:{expr}", True
    return f"{pid}:{frame.get('filename')}:{expr}", False


def _lock_words(frame: Frame, expr: str) -> tuple[str, str]:
    """Return (kind, words) for a lock taken at ``frame``: logging's handler lock gets its class."""
    filename = str(frame.get("filename") or "")
    if filename.endswith(os.path.join("logging", "__init__.py")) and expr == "self.lock":
        shown = _local_repr(frame, "self") or ""
        cls = shown[1:].split(" ", 1)[0] if shown.startswith("<") else ""
        return "handler lock", f"the lock of logging handler {cls}" if cls else "a logging handler's lock"
    return "lock", f"`{expr}` ({os.path.basename(filename)})"


_NOTIFY_WAITS = (
    (("queue.py",), "Queue.get", "queue", "an item on a queue"),
    (("queue.py",), "Queue.put", "queue", "room on a queue"),
    (("concurrent/futures/_base.py",), "", "future", "a concurrent.futures result"),
    (("threading.py",), "Event.wait", "event", "an event to be set"),
    (("threading.py",), "Thread.join", "join", "another thread to end"),
    (("threading.py",), "", "condition", "a notify on a condition"),
)


def _notify_wait(frames: Sequence[Frame]) -> tuple[str, str] | None:
    """Return (kind, words) when the innermost frames wait for another thread to act."""
    if not frames or not _endswith(frames[0], "threading.py"):
        return None
    if not str(frames[0].get("name") or "").endswith(("Condition.wait", "Thread._wait_for_tstate_lock")):
        return None
    for frame in frames[1:]:
        for files, name, kind, words in _NOTIFY_WAITS:
            if _endswith(frame, *files) and str(frame.get("name") or "").endswith(name):
                return kind, words
        if not _endswith(frame, "threading.py"):
            break
    return "condition", "a notify on a condition"


def _first_caller(frames: Sequence[Frame]) -> int:
    """Return the index of the first frame outside threading.py and queue.py."""
    inside = ("threading.py", "queue.py")
    return next((i for i, f in enumerate(frames) if not _endswith(f, *inside)), len(frames))


def _python_edges(nodes: Mapping[str, ThreadNode], sources: Sources) -> list[Edge]:
    holders: dict[str, set[str]] = {}
    for key, node in nodes.items():
        # A thread in Condition.wait has released the condition's lock, though its caller's frame
        # still stands inside the `with` block that took it.
        skip = _first_caller(node.frames) if _notify_wait(node.frames) else -1
        for i, frame in enumerate(node.frames):
            line = frame.get("line")
            if i <= skip:
                continue
            if not frame.get("filename") or line is None or node.pid is None:
                continue
            sites = sources.sites(str(frame["filename"]))
            taking = sites.waits.get(int(line), ()) if i == 0 else ()
            for expr in sites.holds.get(int(line), ()):
                if expr not in taking:
                    holders.setdefault(lock_identity(node.pid, frame, expr)[0], set()).add(key)

    edges = []
    for key, node in nodes.items():
        if node.active or not node.frames or node.pid is None:
            continue
        notify = _notify_wait(node.frames)
        if notify is not None:
            if node.in_transaction:  # an idle pool thread waiting for work is no finding
                edges.append(Edge(key, None, "python", notify[0], notify[1],
                                  inferred="waits for another thread to act: no thread holds it"))
            continue
        frame = node.frames[0]
        if frame.get("line") is None or not frame.get("filename"):
            continue
        for expr in sources.sites(str(frame["filename"])).waits.get(int(frame["line"]), ()):
            identity, exact = lock_identity(node.pid, frame, expr)
            kind, words = _lock_words(frame, expr)
            found = sorted(holders.get(identity, set()) - {key})
            if len(found) == 1:
                how = "object identity from locals" if exact else "the only thread holding this expression"
                edges.append(Edge(key, found[0], "python", kind, words, identity, how))
            else:
                why = ("no thread of the dumped processes holds it on a line of a `with` block or "
                       "after an acquire()") if not found else f"{len(found)} threads hold a lock so named"
                edges.append(Edge(key, None, "python", kind, words, identity, why))
    return edges


def activity(graph: Graph, key: str) -> str:
    """Say in words what a thread is doing: what it waits for, else where it runs or sleeps."""
    node = graph.nodes[key]
    for edge in graph.out(key):
        holder = "an unknown holder" if edge.holder is None else describe(graph, edge.holder)
        if edge.layer == "db":
            return f"waits for {edge.what} ({holder})"
        return f"waits for {edge.what}" + ("" if edge.kind in _NOTIFY_KINDS else f" held by {holder}")
    site = node.site()
    where = f"`{site['function']}` ({_short(site['file'])}:{site['line']})"
    state = frame_state(node.frames)
    if state == "postgres":
        return f"waits on Postgres in {where}"
    if state == "network":
        return f"waits on a network call in {where}"
    return f"runs {where}" if node.active else f"is blocked in {where}"


_NOTIFY_KINDS = {"queue", "event", "future", "join", "condition"}


def frame_state(frames: Sequence[Frame]) -> str:
    """Return ``postgres``, ``network`` or ``app`` from the library frames above the own code."""
    inner = []
    for frame in frames:
        filename = str(frame.get("filename") or "")
        if not is_library(filename):
            break
        inner.append(filename)
    if any(p in f for f in inner for p in _PSYCOPG):
        return "postgres"
    if any(p in f for f in inner for p in _SOCKET):
        return "network"
    return "app"


def describe(graph: Graph, key: str) -> str:
    """Name a thread: ``thread 4242 of pid 17 in `emit` (handlers.py:31), backend 901``."""
    node = graph.nodes.get(key)
    if node is None:
        return UNKNOWN
    site = node.site()
    if node.tid is None:
        owner = f" of pid {node.pid}" if node.pid else ""
        return f"backend {site['backend_pid']}{owner} (its thread is not known)"
    if not node.frames:
        text = f"thread {node.tid} of pid {node.pid} (its process was not dumped at this moment)"
        return text + (f", backend {site['backend_pid']}" if site["backend_pid"] else "")
    where = f"`{site['function']}` ({_short(site['file'])}:{site['line']})"
    text = f"thread {node.tid} of pid {node.pid} in {where}"
    return text + (f", backend {site['backend_pid']}" if site["backend_pid"] else "")


def _short(filename: Any) -> str:
    return os.path.basename(str(filename or "?"))
