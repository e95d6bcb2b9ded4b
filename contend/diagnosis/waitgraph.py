"""The wait-for graph over server threads: Python waits and Postgres lock waits in one graph.

Pure but for reading source files (through ``Sources``, which a test can replace): it takes the
py-spy dumps of server processes taken at one moment (``pyspy.parse_dump``, with locals when they
were captured), the backend rows of the Postgres snapshot nearest to them (``pg_backends`` records)
the client of each backend (``attribution.resolve_client``) and the threads blocked on backends'
sockets (``sockets.backends_by_socket``), and returns a ``Graph``.

Edges go from a waiting thread to the thread it waits for:

* database edges: backend b waits for backend a (``pg_blocking_pids``), each backend placed on its
  thread by ``mapping.map_backends`` (application_name, socket, elimination), else on a node of its
  own (``backend:<pid>``) that stands for its unknown thread or for its candidate threads; edges
  through candidates are proven only when every candidate leads to the same node;
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

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contend.diagnosis import mapping
from contend.diagnosis.clients import Client
from contend.diagnosis.sources import LockSites, Sources
from contend.diagnosis.threads import short_path

LIBRARY_MARKS = ("site-packages", "dist-packages", "/lib/python3", "<")
_PSYCOPG = ("/psycopg/", "/psycopg_binary/", "/psycopg_c/", "/psycopg2/")
_SOCKET = ("/socket.py", "/selectors.py", "/ssl.py", "/select.py", "/asyncio/", "/http/client.py")
UNKNOWN = "unknown holder"
CONNECTION_REPR = re.compile(r"<(?:[\w.]+\.)?(?:Connection|AsyncConnection|connection) ")
"""py-spy's repr of a psycopg 3 or psycopg2 connection (a frame holding one may be in a transaction)."""

Frame = Mapping[str, Any]


def is_library(filename: str) -> bool:
    """Tell whether a frame's file is the standard library or an installed package."""
    return any(mark in filename for mark in LIBRARY_MARKS)


def _endswith(frame: Frame, *suffixes: str) -> bool:
    return str(frame.get("filename") or "").endswith(suffixes)


# --- the graph -----------------------------------------------------------------------------------


@dataclass
class ThreadNode:
    """One server thread (or, when its thread is not known, one backend of a process)."""

    key: str
    pid: int | None
    tid: int | None
    name: str | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    active: bool = False
    backend: dict[str, Any] | None = None
    """The backend row of the thread's connection with the oldest open transaction, if any."""
    mapped_by: str | None = None
    """How the backend was mapped to this thread (``mapping.EVIDENCE``), None when it was not."""
    candidates: tuple[str, ...] = ()
    """A backend node: the threads one of which holds it (elimination left several)."""
    candidate_of: bool = False
    """A thread in a transaction that is a candidate of a backend mapped to several threads."""

    def site(self) -> dict[str, Any]:
        """Return where the thread is: its innermost own-code frame (else its innermost frame), and
        ``path``, the three innermost own-code functions, outermost first."""
        own = [f for f in self.frames if not is_library(str(f.get("filename") or ""))]
        frame = own[0] if own else (self.frames[0] if self.frames else {})
        backend = self.backend or {}
        return {
            "pid": self.pid, "tid": self.tid, "name": self.name,
            "backend_pid": backend.get("pid"), "mapped_by": self.mapped_by,
            "candidates": list(self.candidates), "comment": backend.get("comment"),
            "function": frame.get("name"), "file": frame.get("filename"), "line": frame.get("line"),
            "path": " -> ".join(str(f.get("name")) for f in reversed(own[:3])),
        }

    @property
    def in_transaction(self) -> bool:
        return bool(self.backend and self.backend.get("xact_age") is not None) or self.candidate_of

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
    proof: str = "proven"
    """``inferred`` for an edge through a backend mapped to candidate threads that do not all lead to
    its holder."""
    candidates: tuple[str, ...] = ()
    """The candidate threads the edge goes through, if any."""

    def record(self) -> dict[str, Any]:
        return {"waiter": self.waiter, "holder": self.holder, "layer": self.layer, "kind": self.kind,
                "what": self.what, "lock": self.lock, "inferred": self.inferred, "proof": self.proof,
                "candidates": list(self.candidates)}


@dataclass
class Graph:
    """The wait-for graph of one moment."""

    t: float
    nodes: dict[str, ThreadNode]
    edges: list[Edge]
    with_locals: bool
    holders: dict[int, mapping.Holder] = field(default_factory=dict)
    """Backend pid -> its thread(s) and the evidence."""
    dumped: frozenset[int] = frozenset()
    targets: frozenset[int] = frozenset()
    """The processes stacks are taken of, in this moment's round or another."""

    def out(self, key: str) -> list[Edge]:
        return [e for e in self.edges if e.waiter == key]

    def into(self, key: str) -> list[Edge]:
        return [e for e in self.edges if e.holder == key]

    def mapping_record(self) -> dict[str, Any]:
        """Return how the backends of the dumped processes were mapped, and the waits left open for
        lack of a mapping (what would close each)."""
        gaps = []
        for edge in self.edges:
            node = self.nodes.get(edge.holder or "")
            if edge.layer == "db" and node is not None and node.tid is None and node.backend:
                bpid = int(node.backend["pid"])
                holder = self.holders.get(bpid) or mapping.Holder(bpid, None, why=mapping.UNKNOWN_CLIENT)
                waiter = self.nodes[edge.waiter].backend
                gaps.append(mapping.gap(holder, int(waiter["pid"]) if waiter else None, self.targets))
        return mapping.summary(self.holders, self.dumped) | {"open": list(dict.fromkeys(gaps))[:5]}

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
            "mapping": self.mapping_record(),
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
    sockets: Mapping[int, mapping.OnSocket] | None = None,
    remembered: Mapping[int, tuple[str, str]] | None = None,
    targets: Iterable[int] = (),
) -> Graph:
    """Return the wait-for graph of one moment.

    ``dumps`` are ``pyspy.jsonl`` records (``pid``, ``threads``); ``backends`` the ``pg_backends``
    records of one Postgres snapshot; ``clients`` maps a backend pid to its client (or None);
    ``sockets`` a backend pid to the thread blocked on its connection (``sockets.backends_by_socket``);
    ``remembered`` the threads found for the same transactions at earlier moments (``mapping.map_backends``);
    ``targets`` every process stacks are taken of (a round may dump only some).
    """
    sources = sources or Sources()
    nodes: dict[str, ThreadNode] = {}
    with_locals = False
    for dump in dumps:
        pid = int(dump["pid"])
        for thread in dump.get("threads") or ():
            native = thread.get("os_thread_id")
            key = thread_key(pid, native if native is not None else thread.get("thread_id"))
            frames = list(thread.get("frames") or ())
            with_locals = with_locals or any("locals" in f for f in frames)
            nodes[key] = ThreadNode(key, pid, native, thread.get("name"), frames, bool(thread.get("active")))

    backend_rows = {int(b["pid"]): b for b in backends}
    facts = [thread_facts(node, sources) for node in nodes.values()]
    holders = mapping.map_backends(backend_rows.values(), clients, sockets or {}, facts, remembered)
    blockers = {int(b) for row in backend_rows.values() for b in row.get("blocked_by") or ()}
    node_of_backend: dict[int, str] = {}
    for bpid, row in backend_rows.items():
        holder = holders.get(bpid) or mapping.Holder(bpid, None)
        waits = bool(row.get("blocked_by")) or bpid in blockers
        found = holder.thread
        if found is not None and found not in nodes:
            if holder.evidence != "application_name" or not waits:
                continue  # named, but neither dumped nor waiting: nothing to draw
            # A thread of a process not dumped at this moment: named by its application_name, so
            # it is the same node as in the graph of a moment its process was dumped.
            owner, _, tid = found.partition(":")
            nodes[found] = ThreadNode(found, int(owner), int(tid))
        if found is None:
            if not waits and len(holder.candidates) < 2:
                continue
            found = f"backend:{bpid}"
            nodes.setdefault(found, ThreadNode(found, holder.pid, None, candidates=holder.candidates))
            for key in holder.candidates:
                nodes[key].candidate_of = True
        node_of_backend[bpid] = found
        node = nodes[found]
        node.mapped_by = node.mapped_by or holder.evidence
        if node.backend is None or (row.get("xact_age") or -1.0) > (node.backend.get("xact_age") or -1.0):
            node.backend = dict(row)

    edges = _python_edges(nodes, sources)
    for bpid, row in backend_rows.items():
        for blocker in row.get("blocked_by") or ():
            waiter, holder_key = node_of_backend.get(bpid), node_of_backend.get(int(blocker))
            if waiter is None or waiter == holder_key:
                continue
            edges.append(Edge(waiter, holder_key, "db", "row lock", f"a lock held by backend {blocker}",
                              inferred="pg_blocking_pids"))
    edges += _candidate_edges(nodes, edges)
    return Graph(t, nodes, edges, with_locals, holders, frozenset(int(d["pid"]) for d in dumps),
                 frozenset(targets))


def thread_facts(node: ThreadNode, sources: Sources) -> mapping.ThreadFacts:
    """Return what the mapping needs of a dumped thread: in a transaction, in a driver call, waiting
    in Python."""
    assert node.pid is not None
    in_tx = any(_in_atomic(frame, node.frames[i + 1] if i + 1 < len(node.frames) else {}, sources) or any(
        CONNECTION_REPR.match(str(var.get("repr") or "")) for var in frame.get("locals") or ())
        for i, frame in enumerate(node.frames))
    waits = False
    if not node.active and node.frames:
        top = node.frames[0]
        sites = sources.sites(str(top.get("filename") or "")) if top.get("filename") else LockSites()
        waits = _notify_wait(node.frames) is not None or int(top.get("line") or -1) in sites.waits
    return mapping.ThreadFacts(node.key, node.pid, in_tx, frame_state(node.frames) == "postgres", waits)


# Who calls the ContextDecorator wrapper with which ATOMIC_REQUESTS makes a view atomic: Django's
# handler (WSGI), or asgiref, which runs a sync view in a thread (ASGI: gunicorn + uvicorn).
ATOMIC_REQUESTS_CALLERS = ((os.path.join("django", "core", "handlers", "base.py"), "_get_response"),
                           (os.path.join("asgiref", "sync.py"), ""))


def _in_atomic(frame: Frame, caller: Frame, sources: Sources) -> bool:
    """Tell whether a frame runs inside Django's ``atomic``: its own frames, the ``ContextDecorator``
    wrapper of ``@atomic`` (its ``self`` an Atomic, when locals were taken) or of ATOMIC_REQUESTS
    (called by Django's request handler), or a line inside ``with transaction.atomic():`` or an
    ``@atomic`` function."""
    filename, name = str(frame.get("filename") or ""), str(frame.get("name") or "")
    if filename.endswith(os.path.join("django", "db", "transaction.py")):
        return True
    if filename.endswith("contextlib.py") and name.endswith("inner"):
        return "Atomic" in (_local_repr(frame, "self") or "") or any(
            _endswith(caller, path) and str(caller.get("name") or "").endswith(function)
            for path, function in ATOMIC_REQUESTS_CALLERS)
    if not filename or frame.get("line") is None or is_library(filename):
        return False
    return int(frame["line"]) in sources.sites(filename).atomic


def _candidate_edges(nodes: Mapping[str, ThreadNode], edges: Sequence[Edge]) -> list[Edge]:
    """Return the edges through backends mapped to several candidate threads.

    Out of such a backend: to the node every candidate waits for (proven), else to each node some
    candidate waits for (inferred). Into it: from a thread waiting for one of its candidates (inferred).
    """
    out: list[Edge] = []
    out_of: dict[str, list[Edge]] = {}
    for edge in edges:
        if edge.holder is not None:
            out_of.setdefault(edge.waiter, []).append(edge)
    for key, node in nodes.items():
        if not node.candidates:
            continue
        leads = [out_of.get(c, []) for c in node.candidates]
        targets = {e.holder for lead in leads for e in lead}
        proven = len(targets) == 1 and all(leads)
        for target in sorted(str(t) for t in targets):
            first = next(e for lead in leads for e in lead if e.holder == target)
            how = ("every candidate thread waits for it" if proven else
                   f"some of the {len(node.candidates)} candidate threads wait for it")
            out.append(Edge(key, target, first.layer, first.kind, first.what, first.lock, how,
                            "proven" if proven else "inferred", node.candidates))
        for edge in edges:
            if edge.holder in node.candidates and edge.waiter not in node.candidates:
                out.append(Edge(edge.waiter, key, edge.layer, edge.kind, edge.what, edge.lock,
                                "it waits for one of the candidate threads", "inferred", node.candidates))
    return out


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
    return "lock", f"`{expr}` ({short_path(filename)})"


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
    where = f"`{site['function']}` ({short_path(site['file'])}:{site['line']})"
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
        known = f"one of {len(node.candidates)} candidates" if node.candidates else "not known"
        functions = {graph.nodes[c].site()["function"] for c in node.candidates if c in graph.nodes}
        if len(functions) == 1 and None not in functions:
            known += f", all in `{functions.pop()}`"
        return f"backend {site['backend_pid']}{owner} (its thread is {known})"
    if not node.frames:
        why = ("its process is a py-spy target, not dumped in this round" if node.pid in graph.targets
               else "its process is not a py-spy target: add it with --pyspy-pid or pyspy_pids")
        text = f"thread {node.tid} of pid {node.pid} ({why})"
        return text + (f", backend {site['backend_pid']}" if site["backend_pid"] else "")
    where = f"`{site['function']}` ({short_path(site['file'])}:{site['line']})"
    text = f"thread {node.tid} of pid {node.pid} in {where}"
    return text + (f", backend {site['backend_pid']}" if site["backend_pid"] else "")
