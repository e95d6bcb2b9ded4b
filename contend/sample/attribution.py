"""Attribution: which client process and thread holds each root blocker, and what it is running.

A backend is mapped to its client from ``application_name`` when the client sets it in the
reference server's format (docs/records.md), else from its client address and port through the
TCP socket table of ``/proc`` (``psutil.net_connections``) to the owning pid. The socket path
reaches a process, not a thread: the thread is named only when that process has one thread.
This module reads ``/proc`` through psutil; contend/sample/namespaces.py reads the pid namespaces there.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psutil

from contend.diagnosis.clients import Client, parse_app_name, pick_thread
from contend.errors import SamplerError


def pid_of_socket(client_addr: str | None, client_port: int | None,
                  backend_pid: int | None = None) -> int | None:
    """Return the local pid whose TCP socket has local address (client_addr, client_port).

    Linux gives one local port to several connections when they go to different servers, so with
    ``backend_pid`` (the Postgres backend of that client) only the socket connected to that
    backend's own end counts; when the backend's socket is not visible here (a server in another
    network namespace or host), the local address alone, if one process has it. None for a
    Unix-socket client (port -1 or NULL address), a client on another host, a process of another
    user when not root, or an address that several processes share.
    """
    if not client_addr or client_port is None or client_port < 0:
        return None
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    client = (client_addr, client_port)
    server_ends = {tuple(c.laddr) for c in connections
                   if backend_pid and c.pid == backend_pid and c.raddr and tuple(c.raddr) == client}
    pids = {int(c.pid) for c in connections
            if c.pid and c.pid != backend_pid and c.laddr and tuple(c.laddr) == client
            and (not server_ends or (c.raddr and tuple(c.raddr) in server_ends))}
    return pids.pop() if len(pids) == 1 else None


def resolve_client(backend: Mapping[str, Any]) -> Client | None:
    """Return the client of a backend record: by application_name, else by its socket."""
    client = parse_app_name(backend.get("app"))
    if client is not None:
        return client
    pid = pid_of_socket(backend.get("client_addr"), backend.get("client_port"), backend.get("pid"))
    if pid is None:
        return None
    return Client(pid=pid, via="socket")


def pids_matching(pattern: str) -> list[int]:
    """Return the pids of processes whose command line matches the regular expression ``pattern``."""
    regex = re.compile(pattern)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline and regex.search(cmdline) and proc.pid != psutil.Process().pid:
            found.append(proc.pid)
    return sorted(found)


class Attributor:
    """Follows root blockers across ticks; attributes each one that stays root ``threshold_s``.

    One record per root episode. The on-demand dump is rate-limited per client process
    (``min_dump_interval_s``) so a long incident does not keep pausing the same server.
    """

    def __init__(
        self,
        threshold_s: float = 1.0,
        *,
        dumper: Callable[[int], list[dict[str, Any]]] | None = None,
        resolver: Callable[[Mapping[str, Any]], Client | None] = resolve_client,
        min_dump_interval_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.threshold_s = threshold_s
        self.dumper = dumper
        self.resolver = resolver
        self.min_dump_interval_s = min_dump_interval_s
        self.clock = clock
        self._since: dict[int, float] = {}
        self._done: set[int] = set()
        self._last_dump: dict[int, float] = {}

    def due(self, tick: Mapping[str, Any]) -> list[tuple[dict[str, Any], float]]:
        """Update root ages from a tick; return the roots to attribute now, with how long they were root."""
        t = float(tick["t"])
        roots = {int(r["pid"]): r for r in tick["roots"]}
        for pid in list(self._since):
            if pid not in roots:
                del self._since[pid]
                self._done.discard(pid)
        ready = []
        for pid, root in roots.items():
            since = self._since.setdefault(pid, t)
            if pid not in self._done and t - since >= self.threshold_s:
                self._done.add(pid)
                ready.append((dict(root), t - since))
        return ready

    def attribute(self, t: float, root: Mapping[str, Any], root_for_s: float,
                  backend: Mapping[str, Any] | None) -> dict[str, Any]:
        """Return one ``samples/attribution.jsonl`` record for a root blocker."""
        client = self.resolver(backend or root) if (backend or root) else None
        stack = None
        thread_id = client.thread_id if client else None
        if client is not None and self.dumper is not None and self._may_dump(client.pid):
            try:
                thread = pick_thread(client, self.dumper(client.pid))
            except SamplerError:
                thread = None
            if thread is not None:
                stack = thread["frames"]
                thread_id = thread.get("thread_id")
        return {
            "t": t,
            "backend_pid": root["pid"],
            "client_pid": client.pid if client else None,
            "thread_id": thread_id,
            "role": client.role if client else None,
            "root_for_s": round(root_for_s, 3),
            "blocks": root.get("blocks"),
            "state": root.get("state"),
            "query": root.get("query"),
            "fingerprint": root.get("fingerprint"),
            "stack": stack,
        }

    def _may_dump(self, pid: int) -> bool:
        now = self.clock()
        if now - self._last_dump.get(pid, float("-inf")) < self.min_dump_interval_s:
            return False
        self._last_dump[pid] = now
        return True


def attribute_all(attributor: Attributor, tick: Mapping[str, Any],
                  backends: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return the attribution records due at this tick (resolving and dumping inline)."""
    by_pid = {int(b["pid"]): b for b in backends}
    return [
        attributor.attribute(float(tick["t"]), root, root_for, by_pid.get(int(root["pid"])))
        for root, root_for in attributor.due(tick)
    ]
