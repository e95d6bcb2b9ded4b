"""Which thread holds each backend, with its evidence (pure; docs/metrics.md "Mapping backends to threads").

Evidence, strongest first:

``application_name``  the client names its process and thread in the reference server's format;
``socket``            a thread blocked in a system call on the backend's connection (the collector
                      ``contend.sample.sockets`` reads it from ``/proc``);
``elimination``       within one process (known from the socket table), the backends not mapped
                      so far against the threads not mapped so far that are inside a transaction.
                      A backend running a statement is not held by a thread waiting on a Python
                      lock; a backend idle in transaction is not held by a thread inside a driver
                      call. A backend left with one candidate is mapped to it (and that thread is
                      no candidate of the others); one left with several maps to that *set*.

An edge through a candidate set is proven only when every candidate leads to the same next node
(``waitgraph.build``); a cycle with an edge that is not proven is reported as inferred.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from contend.diagnosis.clients import Client

EVIDENCE = ("application_name", "socket", "elimination")
UNKNOWN_CLIENT = "its client process is not known (the socket table does not show it)"


class OnSocket(Protocol):
    """A thread blocked on a backend's connection (``contend.sample.sockets.SocketWait``)."""

    @property
    def pid(self) -> int: ...

    @property
    def tid(self) -> int: ...


@dataclass(frozen=True)
class ThreadFacts:
    """What the mapping needs of one dumped thread."""

    key: str
    pid: int
    in_transaction: bool
    """Django's ``atomic`` is on its stack, or a frame holds a driver connection."""
    in_driver: bool
    """Its innermost frames are a database driver's (it waits on Postgres)."""
    waits_in_python: bool
    """It waits on a Python lock, condition or queue."""


@dataclass(frozen=True)
class Holder:
    """The thread (or candidate threads) of one backend, and how that is known."""

    backend_pid: int
    pid: int | None
    """The client process, when known."""
    candidates: tuple[str, ...] = ()
    """Thread keys: one when mapped, several when elimination left a set, none when not mapped."""
    evidence: str | None = None
    """``application_name``, ``socket``, ``elimination``, or None (not mapped)."""
    why: str = ""
    """When not mapped to one thread: what was tried, in words."""

    @property
    def thread(self) -> str | None:
        return self.candidates[0] if len(self.candidates) == 1 else None

    def record(self) -> dict[str, Any]:
        return {"backend_pid": self.backend_pid, "pid": self.pid, "evidence": self.evidence,
                "candidates": list(self.candidates), "why": self.why}


def _key(pid: int, tid: int) -> str:
    return f"{pid}:{tid}"


def in_transaction(row: Mapping[str, Any]) -> bool:
    """Tell whether a backend row is inside a transaction (idle in it, or running a statement)."""
    return row.get("xact_age") is not None


def map_backends(
    backends: Iterable[Mapping[str, Any]],
    clients: Mapping[int, Client | None],
    sockets: Mapping[int, OnSocket],
    threads: Sequence[ThreadFacts],
    remembered: Mapping[int, tuple[str, str]] | None = None,
) -> dict[int, Holder]:
    """Return backend pid -> its holder, for every backend with a client process or a named thread.

    ``clients`` maps a backend pid to its client (application_name, else the socket table's process);
    ``sockets`` a backend pid to the thread blocked on its connection; ``threads`` are the dumped
    threads of this moment; ``remembered`` backend pid -> (thread key, evidence) found at an earlier
    moment of the same transaction (a transaction stays on the thread that opened it).
    """
    remembered = remembered or {}
    rows = {int(b["pid"]): b for b in backends}
    dumped = {t.pid for t in threads}
    known = {t.key for t in threads}
    holders: dict[int, Holder] = {}
    for bpid in rows:
        client = clients.get(bpid)
        wait = sockets.get(bpid)
        if client is not None and client.native_thread_id is not None:
            holders[bpid] = Holder(bpid, client.pid, (_key(client.pid, client.native_thread_id),),
                                   "application_name")
        elif wait is not None and _key(wait.pid, wait.tid) in known:
            holders[bpid] = Holder(bpid, wait.pid, (_key(wait.pid, wait.tid),), "socket")
        elif bpid in remembered and remembered[bpid][0] in known:
            key, evidence = remembered[bpid]
            holders[bpid] = Holder(bpid, int(key.partition(":")[0]), (key,), evidence)
        elif client is not None:
            holders[bpid] = Holder(bpid, client.pid)
    taken = {h.candidates[0] for h in holders.values() if h.candidates}
    for pid in sorted(dumped):
        open_backends = [b for b, h in holders.items()
                         if h.pid == pid and not h.candidates and in_transaction(rows[b])]
        free = [t for t in threads if t.pid == pid and t.key not in taken and t.in_transaction]
        holders.update(_eliminate(pid, {b: rows[b] for b in open_backends}, free))
    for bpid, holder in list(holders.items()):
        if not holder.candidates and not holder.why:
            holders[bpid] = Holder(bpid, holder.pid, why=_why_not(holder.pid, dumped, rows[bpid]))
    return holders


def _fits(row: Mapping[str, Any], thread: ThreadFacts) -> bool:
    if str(row.get("state") or "") == "active":
        return not thread.waits_in_python
    if str(row.get("state") or "").startswith("idle in transaction"):
        return not thread.in_driver
    return True


def _eliminate(pid: int, rows: Mapping[int, Mapping[str, Any]],
               free: Sequence[ThreadFacts]) -> dict[int, Holder]:
    """Map the open backends of one process to its free threads in a transaction."""
    if not rows:
        return {}
    sets = {b: {t.key for t in free if _fits(row, t)} or {t.key for t in free} for b, row in rows.items()}
    settled: set[str] = set()
    changed = True
    while changed:  # a thread that is the one candidate of a backend is no candidate of the others
        changed = False
        for bpid, keys in sets.items():
            if len(keys) == 1 and not keys <= settled:
                settled |= keys
                changed = True
                for other, others in sets.items():
                    if other != bpid and len(others) > 1:
                        others -= keys
    out = {}
    for bpid, keys in sets.items():
        if keys:
            out[bpid] = Holder(bpid, pid, tuple(sorted(keys)), "elimination",
                               "" if len(keys) == 1 else f"elimination left {len(keys)} candidates")
        else:
            out[bpid] = Holder(bpid, pid, why=(
                "its thread is not blocked on its socket and no thread of pid "
                f"{pid} left unmapped shows an open transaction"))
    return out


def _why_not(pid: int | None, dumped: set[int], row: Mapping[str, Any]) -> str:
    if pid is None:
        return UNKNOWN_CLIENT
    if pid not in dumped:
        return f"its process (pid {pid}) was not dumped"
    if not in_transaction(row):
        return "it is not in a transaction"
    return "its thread is not blocked on its socket"


HINT = ("give py-spy the rights to read the process with --locals (root or CAP_SYS_PTRACE), so blocked "
        "sockets and open transactions show, or set application_name per connection in contend's format "
        "(docs/records.md)")


def summary(holders: Mapping[int, Holder], dumped: Iterable[int]) -> dict[str, Any]:
    """Count how the backends of the dumped processes were mapped: those in a transaction, and any
    other mapped one (an idle connection of a pool needs no thread)."""
    dumped = set(dumped)
    counts = dict.fromkeys((*EVIDENCE, "candidates", "not_mapped"), 0)
    total = 0
    for holder in holders.values():
        if holder.pid not in dumped or (holder.evidence is None and "not in a transaction" in holder.why):
            continue
        total += 1
        if holder.evidence is None:
            counts["not_mapped"] += 1
        elif len(holder.candidates) > 1:
            counts["candidates"] += 1
        else:
            counts[holder.evidence] += 1
    parts = [f"{counts[e]} by {e}" for e in EVIDENCE]
    if counts["candidates"]:
        parts.append(f"{counts['candidates']} to several candidate threads")
    parts.append(f"{counts['not_mapped']} not mapped")
    text = (f"{total} backend{'s' if total != 1 else ''} of the dumped processes: " + ", ".join(parts)
            if total else "no backend of the dumped processes is in a transaction")
    return {"backends": total, **counts, "text": text}


def gap(holder: Holder, waiter: int | None = None, targets: Iterable[int] = ()) -> str:
    """Say why a backend's thread is not known and what would make it known (``targets``: the
    processes stacks are taken of, in some round)."""
    head = (f"backend {waiter} waits for a lock held by backend {holder.backend_pid}" if waiter is not None
            else f"backend {holder.backend_pid}")
    owner = f" of pid {holder.pid}" if holder.pid is not None else ""
    why = holder.why or "its thread is not known"
    if holder.evidence == "elimination" and len(holder.candidates) > 1:
        why = (f"its thread is not blocked on its socket and elimination left {len(holder.candidates)} "
               "candidates")
    if holder.pid is None:
        fix = ("run contend on the client's host, as its user or root, or set application_name per "
               "connection in contend's format (docs/records.md)")
    elif "was not dumped" in why and holder.pid in set(targets):
        why += " at this moment"
        fix = "another moment's stacks may show it"
    elif "was not dumped" in why:
        fix = f"add pid {holder.pid} to the processes py-spy reads (--pyspy-pid)"
    else:
        fix = HINT
    return f"{head}{owner}, whose thread is not known: {why}; {fix}."


def over_run(records: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Return the mapping of a run's wait-for graph records: that of the moment with the most backends
    (``text`` and counts), with every distinct wait left open and problem seen; None without records."""
    mappings = [r["mapping"] for r in records if r.get("mapping")]
    if not mappings:
        return None
    peak = max(mappings, key=lambda m: (int(m.get("backends") or 0), -int(m.get("not_mapped") or 0)))
    return {**peak, "graphs": len(mappings),
            "open": list(dict.fromkeys(g for m in mappings for g in m.get("open") or ()))[:5],
            "problems": list(dict.fromkeys(p for m in mappings for p in m.get("problems") or ()))[:5]}
