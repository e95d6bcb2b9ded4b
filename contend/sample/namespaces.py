"""Processes in containers, seen from the host: their pids as this process sees them.

A server in a container names itself by its own pid namespace's numbers (``application_name``
says ``pid=1``), while py-spy and ``/proc`` here use the host's. The kernel lists a process's pid
in every namespace it belongs to, outermost first: ``NSpid`` in ``/proc/<pid>/status``, and the
same for a thread under ``/proc/<pid>/task/<tid>/status``. ``in_our_namespace`` maps a client
named by its container's pid (and thread id) to one of the given processes (the py-spy targets).
Only the pid changes: py-spy reports a thread's ``os_thread_id`` as its process sees it (read from
the thread's own memory), the container's number, which is the one ``application_name`` carries.

The file names of a container's stack frames are the container's too: ``source_reader`` reads them
through ``/proc/<pid>/root`` (the lock sites of the wait-for graph come from those sources). And
py-spy on the host looks a thread's state up under its container number, so it calls every thread
of a container active: ``with_thread_states`` sets it from the host's view of each thread.
A container's sockets are in its own network namespace, out of this one's socket table:
``pid_of_socket_in`` looks a client's address and port up in the candidates' tables.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from contend.diagnosis.clients import Client
from contend.sample.attribution import resolve_client

PROC = Path("/proc")


def ns_pids(pid: int, tid: int | None = None, proc: Path = PROC) -> list[int]:
    """Return the ``NSpid`` of a process (or of one of its threads), outermost first; [] when gone."""
    path = proc / str(pid) / ("status" if tid is None else f"task/{tid}/status")
    try:
        for line in path.read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(n) for n in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


def thread_ids(pid: int, proc: Path = PROC) -> list[int]:
    """Return the thread ids of a process as this process sees them; [] when it is gone."""
    try:
        return sorted(int(name) for name in os.listdir(proc / str(pid) / "task"))
    except (OSError, ValueError):
        return []


def in_our_namespace(client: Client, candidates: Sequence[int], proc: Path = PROC) -> Client:
    """Return ``client`` with the pid, as seen here, of the candidate process it names (the thread,
    when named, tells two containers' pid 1 apart).

    The client's own numbers are kept when it is a candidate of this namespace, when no candidate
    in a deeper namespace carries its pid (and thread), or when two do (two containers).
    """
    if client.pid in candidates and len(ns_pids(client.pid, proc=proc)) == 1:
        return client
    found = [pid for pid in candidates if _names(client, pid, proc)]
    return dataclasses.replace(client, pid=found[0]) if len(found) == 1 else client


def _names(client: Client, pid: int, proc: Path) -> bool:
    """Return whether ``client`` names process ``pid`` of a deeper namespace (and one of its threads)."""
    levels = ns_pids(pid, proc=proc)
    if len(levels) < 2 or levels[-1] != client.pid:
        return False
    return client.native_thread_id is None or any(
        ns_pids(pid, tid, proc)[-1:] == [client.native_thread_id] for tid in thread_ids(pid, proc))


def with_thread_states(pid: int, threads: list[dict[str, Any]], proc: Path = PROC) -> list[dict[str, Any]]:
    """Return py-spy's ``threads`` of ``pid`` with ``active`` (and ``idle``) from the threads' states as
    seen here (running: active), when ``pid`` is in a deeper pid namespace; else unchanged."""
    if len(ns_pids(pid, proc=proc)) < 2:
        return threads
    running = {}
    for tid in thread_ids(pid, proc):
        inner = ns_pids(pid, tid, proc)[-1:]
        try:
            stat = (proc / str(pid) / "task" / str(tid) / "stat").read_text()
        except OSError:
            continue
        if inner:
            running[inner[0]] = stat[stat.rindex(")") + 2:].startswith("R")  # after "pid (comm) "
    return [t | {"active": running[t["os_thread_id"]], "idle": not running[t["os_thread_id"]]}
            if t.get("os_thread_id") in running else t for t in threads]


def pid_of_socket_in(candidates: Sequence[int], client_addr: str | None, client_port: int | None,
                     proc: Path = PROC) -> int | None:
    """Return the candidate in another network namespace that holds the TCP socket whose local end is
    (client_addr, client_port), else None."""
    if not client_addr or client_port is None or client_port < 0:
        return None
    ours = _link(proc / "self" / "ns" / "net")
    for pid in candidates:
        if _link(proc / str(pid) / "ns" / "net") in (None, ours):
            continue
        inode = _socket_inode(proc / str(pid) / "net", client_addr, client_port)
        if inode is not None and _holds(pid, inode, proc):
            return pid
    return None


def _socket_inode(net: Path, addr: str, port: int) -> str | None:
    """Return the inode of the socket bound locally to (addr, port) in a /proc/<pid>/net table."""
    ip = ipaddress.ip_address(addr)
    raw = ip.packed
    # the kernel prints the address as 32-bit words in host order (little-endian here)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    wanted = f"{words.hex().upper()}:{port:04X}"
    try:
        lines = (net / ("tcp" if ip.version == 4 else "tcp6")).read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and fields[1] == wanted:
            return fields[9]
    return None


def _holds(pid: int, inode: str, proc: Path) -> bool:
    try:
        fds = os.listdir(proc / str(pid) / "fd")
    except OSError:
        return False
    return any(_link(proc / str(pid) / "fd" / fd) == f"socket:[{inode}]" for fd in fds)


def _link(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def resolver_in_our_namespace(
    candidates: Sequence[int],
    resolve: Callable[[Mapping[str, Any]], Client | None] = resolve_client,
) -> Callable[[Mapping[str, Any]], Client | None]:
    """Return a resolver of backends to clients whose pids are this namespace's (``in_our_namespace``),
    also through the socket tables of the candidates in containers (``pid_of_socket_in``)."""
    def resolver(backend: Mapping[str, Any]) -> Client | None:
        client = resolve(backend)
        if client is not None:
            return in_our_namespace(client, candidates)
        pid = pid_of_socket_in(candidates, backend.get("client_addr"), backend.get("client_port"))
        return Client(pid=pid, via="socket") if pid is not None else None
    return resolver


def source_reader(candidates: Sequence[int], proc: Path = PROC) -> Callable[[str], str] | None:
    """Return a reader of a frame's source file from the root of the first candidate in a container
    (a root of its own) that has that file, else from this process's file system; None when no
    candidate is in a container."""
    here = _root_id(Path("/"))
    roots = [root for pid in candidates if _root_id(root := proc / str(pid) / "root") not in (None, here)]
    if not roots:
        return None

    def read(filename: str) -> str:
        for root in roots:
            try:
                return (root / filename.lstrip("/")).read_text(encoding="utf-8")
            except OSError:
                continue
        return Path(filename).read_text(encoding="utf-8")
    return read


def _root_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino
