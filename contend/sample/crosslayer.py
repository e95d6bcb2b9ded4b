"""The cross-layer wait-for graph during a run: built whenever stacks are taken, findings written as records.

``CrossLayer`` keeps the Postgres snapshots of the last seconds (``observe``, from the Postgres loop).
Each time the py-spy sampler hands over dumps (``on_dumps``) it builds the graph of that moment
(``waitgraph.build``), the backends of each dumped process read from the snapshot nearest that
process's dump (a round dumps its processes one after another), and writes one
``samples/waitgraph.jsonl`` record with its findings and how its backends were mapped to threads:
the threads blocked on sockets are read just before each dump (``sockets``), and a thread found for
a transaction is remembered for the rest of it. Dumps with locals tell lock objects apart but cost
more: ``run`` takes them only when the forest shows a reason (a root blocker idle in transaction, or
a lock waiter older than ``waiter_age_s``), at most once per ``locals_interval_s``, and records their
count and CPU time in the same records.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from contend.diagnosis import findings, waitgraph
from contend.diagnosis.clients import Client
from contend.diagnosis.sources import Sources
from contend.errors import SamplerError
from contend.sample import pyspy, sockets
from contend.sample.attribution import resolve_client
from contend.sample.namespaces import resolver_in_our_namespace, source_reader

Dumper = Callable[..., list[dict[str, Any]]]
SocketReader = Callable[[Sequence[int]], tuple[list[sockets.SocketWait], list[str]]]
Snapshot = tuple[dict[str, Any], list[dict[str, Any]]]
"""A Postgres tick and its backend rows."""


def locals_reason(tick: Mapping[str, Any], backends: Iterable[Mapping[str, Any]],
                  age_s: float) -> str | None:
    """Return why a dump with locals could explain this snapshot, else None: a root blocker idle in
    transaction, or a lock waiter, for ``age_s`` or more (a moment's idle between two statements
    of a busy transaction explains nothing)."""
    roots = {int(r["pid"]) for r in tick.get("roots") or ()}
    backends = list(backends)
    if any(int(b["pid"]) in roots and str(b.get("state") or "").startswith("idle in transaction")
           and (b.get("state_age") or 0.0) >= age_s for b in backends):
        return f"root blocker idle in transaction for {age_s:g} s or more"
    if any(b.get("wait_event_type") == "Lock" and (b.get("state_age") or 0.0) >= age_s for b in backends):
        return f"lock waiter older than {age_s:g} s"
    return None


SOCKET_READS = 4
"""A process with a lock waiter whose connection no thread was seen on is read up to this many times,
``SOCKET_REREAD_S`` apart: psycopg 3 leaves its poll every 100 ms, and on a busy machine the thread
may wait for a core before it polls again."""
SOCKET_REREAD_S = 0.01
SOCKETS_BEFORE_DUMP_S = 15.0
"""Socket waits read this long before a dump (py-spy's timeout and more) still go with it."""
SNAPSHOTS_S = 5.0
"""Postgres snapshots are kept this long, to join each dump to its nearest (a round of dumps under load
takes a second or two; a slower dump gets the oldest kept). At 10 Hz with 200 backends shown that is
about 15 MB."""
SAME_XACT_S = 0.25
"""Two snapshots see the same transaction of a backend when their starts differ by less than this."""


def _xact_start(backend: Mapping[str, Any]) -> float | None:
    age = backend.get("xact_age")
    return None if age is None or backend.get("t") is None else float(backend["t"]) - float(age)


class CrossLayer:
    """Builds the wait-for graph of a run's server processes; thread-safe between its callers."""

    def __init__(
        self,
        pids: Sequence[int],
        timeouts: Mapping[str, float],
        write: Callable[[list[dict[str, Any]]], None],
        *,
        dumper: Dumper = pyspy.dump,
        resolver: Callable[[Mapping[str, Any]], Client | None] = resolve_client,
        waiter_age_s: float = 1.0,
        locals_interval_s: float = 5.0,
        sources: Sources | None = None,
        budget: Callable[[int], bool] = lambda dumps: True,
        socket_reader: SocketReader = sockets.socket_waits,
    ) -> None:
        self.pids = list(pids)
        self.timeouts = dict(timeouts)
        self.write = write
        self.dumper = dumper
        self.resolver = resolver
        self._resolve = resolver_in_our_namespace(self.pids, resolver)  # containers: their pids as ours
        self.waiter_age_s = waiter_age_s
        self.locals_interval_s = locals_interval_s
        self.budget = budget
        self.socket_reader = socket_reader
        """Reads which threads of the dumped processes are blocked on which socket (``/proc``)."""
        """Asked for a round's dumps before it is taken (the py-spy sampler's ``spend``)."""
        self.sources = sources or Sources(source_reader(self.pids))
        self.disabled = False
        self._lock = threading.Lock()
        self._latest: Snapshot | None = None
        self._snapshots: deque[Snapshot] = deque()
        """The snapshots of the last ``SNAPSHOTS_S``, oldest first."""
        self._clients: dict[tuple[Any, ...], Client | None] = {}
        self._last_locals = float("-inf")
        self._waits: dict[int, tuple[float, list[sockets.SocketWait], list[str]]] = {}
        """pid -> (when, its threads blocked on sockets, what could not be read), read before its dump."""
        self._sockets_s = 0.0
        """Time spent reading socket waits since the last record."""
        self._remembered: dict[int, tuple[float, str, str]] = {}
        """Backend pid -> (its transaction's start, thread key, evidence): a transaction stays on the
        thread that opened it, so a thread found once (its socket, or elimination with locals) is
        known for the rest of that transaction."""

    def observe(self, tick: dict[str, Any], backends: list[dict[str, Any]]) -> None:
        """Keep the latest Postgres snapshot and those of the last seconds (called by the Postgres loop
        at every tick)."""
        with self._lock:
            self._latest = (tick, backends)
            self._snapshots.append((tick, backends))
            while float(tick["t"]) - float(self._snapshots[0][0]["t"]) > SNAPSHOTS_S:
                self._snapshots.popleft()

    def moment(self, records: Sequence[Mapping[str, Any]],
               extra: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Return the graph record of the moment these ``pyspy.jsonl`` records were taken, with its
        findings; None without stacks or before the first Postgres snapshot."""
        dumps = [r for r in records if r.get("threads")]
        with self._lock:
            latest = self._latest
        if not dumps or latest is None:
            return None
        t = max(float(r["t"]) for r in dumps)
        tick, backends = self._joined(dumps, latest)
        clients = {int(b["pid"]): self._client(b) for b in backends}
        started = time.perf_counter()
        waits, problems = self._socket_waits(dumps)
        on_socket = sockets.backends_by_socket(waits, backends)
        with self._lock:
            sockets_s, self._sockets_s = self._sockets_s + time.perf_counter() - started, 0.0
        graph = waitgraph.build(t, dumps, backends, clients, self.sources, on_socket, self._recall(backends),
                                self.pids)
        self._remember(graph, backends)
        found = findings.of_graph(graph, self.timeouts)
        record = graph.record()
        record["mapping"]["problems"] = problems[:5]
        return record | {"pg_t": tick["t"], "gauges": findings.gauges(graph), "findings": found,
                         "sockets_s": round(sockets_s, 4), **(extra or {})}

    def _joined(self, dumps: Sequence[Mapping[str, Any]], latest: Snapshot) -> Snapshot:
        """Return the tick nearest the newest dump and the backend rows to join to these dumps: a dumped
        process's backends as the snapshot nearest its dump saw them, the others' as the latest did.

        A round dumps its processes one after another, and a loaded machine makes each dump slower: a
        snapshot taken after the round can show a lock already passed to another thread, which the
        first process's stacks do not show yet (its new waiter's thread still queues for it)."""
        with self._lock:
            snapshots = list(self._snapshots) or [latest]

        def nearest(t: float) -> Snapshot:
            return min(snapshots, key=lambda snapshot: abs(float(snapshot[0]["t"]) - t))

        at = {int(d["pid"]): nearest(float(d["t"]))[1] for d in dumps}
        rows = {int(b["pid"]): b for b in latest[1] if self._client_pid(b) not in at}
        for pid, backends in at.items():
            rows.update((int(b["pid"]), b) for b in backends if self._client_pid(b) == pid)
        newest = max(dumps, key=lambda d: float(d["t"]))
        return nearest(float(newest["t"]))[0], list(rows.values())

    def on_dumps(self, records: Sequence[Mapping[str, Any]], extra: Mapping[str, Any] | None = None) -> None:
        """Build and write the graph of the moment these ``pyspy.jsonl`` records were taken.

        A quiet moment (nothing waits on anything) is not written, unless dumps were taken for it.
        """
        record = self.moment(records, extra)
        if record is not None and (record["edges"] or record["findings"] or extra):
            self.write([record])

    def read_sockets(self, pids: Sequence[int]) -> None:
        """Read which threads of ``pids`` wait on sockets, before they are dumped: a blocking py-spy
        dump interrupts a thread's system call, which only a resumed ``poll`` keeps readable."""
        for pid in pids:
            started = time.perf_counter()
            waits, problems = self.socket_reader([pid])
            for _ in range(SOCKET_READS - 1):
                if problems or not self._lock_waiters_off_socket(pid, waits):  # rights, a process gone
                    break
                time.sleep(SOCKET_REREAD_S)
                more, problems = self.socket_reader([pid])
                waits = list({(w.pid, w.tid): w for w in [*waits, *more]}.values())
            with self._lock:
                self._waits[pid] = (time.time(), waits, problems)
                self._sockets_s += time.perf_counter() - started

    def _lock_waiters_off_socket(self, pid: int, waits: Sequence[sockets.SocketWait]) -> bool:
        """Tell whether a backend of ``pid`` waits on a lock in the latest snapshot while no thread
        of ``pid`` is seen on its connection (its client waits for the result all that time)."""
        with self._lock:
            latest = self._latest
        if latest is None:
            return False
        waiters = [b for b in latest[1] if b.get("wait_event_type") == "Lock"
                   and (client := self._client(b)) is not None and client.pid == pid]
        return bool(waiters) and not set(sockets.backends_by_socket(waits, waiters)) >= {
            int(b["pid"]) for b in waiters}

    def reading_sockets(self, dumper: Dumper) -> Dumper:
        """Return ``dumper`` that reads the process's socket waits just before each dump."""
        def dump(pid: int, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            self.read_sockets([pid])
            return dumper(pid, *args, **kwargs)
        return dump

    def _socket_waits(self, dumps: Sequence[Mapping[str, Any]]) -> tuple[list[sockets.SocketWait], list[str]]:
        """Return the socket waits read just before these dumps (read now for a pid read too long ago)."""
        waits: list[sockets.SocketWait] = []
        problems: list[str] = []
        for dump in dumps:
            pid = int(dump["pid"])
            with self._lock:
                read = self._waits.get(pid)
            if read is None or abs(read[0] - float(dump["t"])) > SOCKETS_BEFORE_DUMP_S:
                self.read_sockets([pid])
                with self._lock:
                    read = self._waits[pid]
            waits += read[1]
            problems += read[2]
        return waits, problems

    def _recall(self, backends: Sequence[Mapping[str, Any]]) -> dict[int, tuple[str, str]]:
        """Return the threads remembered for the transactions these backends are still in."""
        out = {}
        for b in backends:
            start = _xact_start(b)
            known = self._remembered.get(int(b["pid"]))
            if known is not None and start is not None and abs(known[0] - start) < SAME_XACT_S:
                out[int(b["pid"])] = (known[1], known[2])
        return out

    def _remember(self, graph: waitgraph.Graph, backends: Sequence[Mapping[str, Any]]) -> None:
        starts = {int(b["pid"]): _xact_start(b) for b in backends}
        self._remembered = {
            bpid: (start, str(holder.thread), str(holder.evidence))
            for bpid, holder in graph.holders.items()
            if holder.thread is not None and holder.evidence in ("socket", "elimination")
            and (start := starts.get(bpid)) is not None
        }

    def _client_pid(self, backend: Mapping[str, Any]) -> int | None:
        client = self._client(backend)
        return None if client is None else client.pid

    def _client(self, backend: Mapping[str, Any]) -> Client | None:
        # The socket table is read once per connection, not at every moment (psutil walks /proc).
        key = (backend["pid"], backend.get("app"), backend.get("client_addr"), backend.get("client_port"))
        if key not in self._clients:
            self._clients[key] = self._resolve(backend)
        return self._clients[key]

    def involved(self) -> list[int]:
        """Return the targets whose threads take part in the latest snapshot's lock waits (the clients
        of the waiters, of what they wait for, and of the roots); every target when none is known."""
        with self._lock:
            latest = self._latest
        if latest is None:
            return self.pids
        tick, backends = latest
        pids = {int(r["pid"]) for r in tick.get("roots") or ()}
        for b in backends:
            if b.get("blocked_by"):
                pids |= {int(b["pid"]), *(int(x) for x in b["blocked_by"])}
        clients = {c.pid for b in backends if int(b["pid"]) in pids and (c := self._client(b)) is not None}
        return [pid for pid in self.pids if pid in clients] or self.pids

    def locals_due(self) -> str | None:
        """Return the reason for a dump with locals now, None when there is none or it is too soon."""
        with self._lock:
            latest = self._latest
        if self.disabled or latest is None or time.monotonic() - self._last_locals < self.locals_interval_s:
            return None
        return locals_reason(latest[0], latest[1], self.waiter_age_s)

    def dump_all(self, with_locals: bool,
                 pids: Sequence[int] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Dump ``pids`` (every target by default) now; return ``pyspy.jsonl``-like records and their cost."""
        self._last_locals = time.monotonic() if with_locals else self._last_locals
        pids = self.pids if pids is None else list(pids)
        records, cpu_s, wall_s, failed = [], 0.0, 0.0, 0
        for pid in pids:
            cost: dict[str, float] = {}
            try:
                self.read_sockets([pid])
                threads = self.dumper(pid, with_locals=with_locals, cost=cost)
                records.append({"t": time.time(), "pid": pid, "threads": threads})
            except SamplerError:
                failed += 1
            cpu_s += cost.get("cpu_s", 0.0)
            wall_s += cost.get("wall_s", 0.0)
        return records, {"dumps": len(pids), "failed": failed, "cpu_s": round(cpu_s, 4),
                         "wall_s": round(wall_s, 4)}

    def take_locals(self, reason: str) -> None:
        """Dump the involved targets with locals, then write the graph of that moment with the dumps' cost.

        Nothing is taken when the budget cannot pay for those dumps."""
        pids = self.involved()
        if not self.budget(len(pids)):
            return
        records, cost = self.dump_all(with_locals=True, pids=pids)
        self.on_dumps(records, {"reason": reason, **{f"locals_{k}": v for k, v in cost.items()}})

    def run(self, stop: threading.Event, poll_s: float = 0.2) -> None:
        """Take dumps with locals whenever they are due, until ``stop``."""
        while not stop.wait(poll_s):
            reason = self.locals_due()
            if reason is not None:
                self.take_locals(reason)
