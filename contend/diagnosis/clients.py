"""Who holds a backend: the client process and thread of a Postgres connection (pure).

``application_name`` in the reference server's format (docs/records.md) names a process and a thread;
the collectors in ``contend.sample`` add what ``/proc`` tells (the socket table, blocked threads).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

APP_NAME_RE = re.compile(r"^contend-ref:(?P<role>\S+) pid=(?P<pid>\d+) tid=(?P<tid>\d+) ntid=(?P<ntid>\d+)")


@dataclass(frozen=True)
class Client:
    """The client end of a backend: a process, and a thread when known."""

    pid: int
    role: str | None = None
    thread_id: int | None = None
    native_thread_id: int | None = None
    via: str = "application_name"


def app_name(role: str, pid: int, thread_id: int, native_thread_id: int) -> str:
    """Return the application_name a reference-server connection sets (docs/records.md)."""
    return f"contend-ref:{role} pid={pid} tid={thread_id} ntid={native_thread_id}"


def parse_app_name(app: str | None) -> Client | None:
    """Return the client named by a reference-server application_name, else None."""
    match = APP_NAME_RE.match(app or "")
    if match is None:
        return None
    return Client(
        pid=int(match["pid"]), role=match["role"], thread_id=int(match["tid"]),
        native_thread_id=int(match["ntid"]),
    )


def pick_thread(client: Client, threads: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the thread of a dump that holds the connection, when it can be told."""
    for thread in threads:
        if client.native_thread_id is not None and thread.get("os_thread_id") == client.native_thread_id:
            return thread
        if client.thread_id is not None and thread.get("thread_id") == client.thread_id:
            return thread
    if client.thread_id is None and len(threads) == 1:
        return threads[0]
    return None
