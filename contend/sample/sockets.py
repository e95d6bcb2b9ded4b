"""Socket evidence: which database connection a thread blocked in a system call waits on.

A thread waiting for Postgres sits in a system call on its connection's socket: libpq and
psycopg's C wait in ``poll``, psycopg's Python waits in ``poll``/``select``/``epoll_wait``, an
asyncio or gevent loop in ``epoll_wait`` on every socket it watches. ``/proc/<pid>/task/<tid>/syscall``
names the call and its arguments; the waited file descriptors are read from them (the ``pollfd``
array or the fd sets in ``/proc/<pid>/mem``, the epoll set in ``/proc/<pid>/fdinfo/<epfd>``, or
the fd argument of a ``read``/``recv*``/``write``/``send*``), each socket's inode from
``/proc/<pid>/fd``, and from it the local TCP port (``/proc/<pid>/net/tcp``, ``tcp6``), which is
``pg_stat_activity.client_port``. For a Unix-domain socket the kernel's sock_diag netlink
interface names the peer socket, and the Postgres process holding that peer is the backend.

These reads need the rights py-spy needs (root, or the same user with ptrace allowed); what cannot
be read becomes a line of text, never an exception. docs/metrics.md, "Mapping backends to threads".
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import platform
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from contend.sample.procfs import (
    EPOLLS,
    MAX_FDS,
    NETLINK_SOCK_DIAG,
    POLLS,
    RESTARTED,
    SELECTS,
    SYSCALLS,
    epoll_targets,
    fdset_fds,
    inet_diag_request,
    inet_diag_sockets,
    normal_address,
    parse_syscall,
    pollfd_fds,
    socket_inode,
    tcp_table,
    unix_diag_peer,
    unix_diag_request,
)

PERMISSION_HINT = "run as root or as the process' user with ptrace allowed (the rights py-spy needs)"
UNIX_PEER_UNKNOWN = "unix socket, peer unknown"


@dataclass(frozen=True)
class SocketWait:
    """A thread blocked in a system call on one or more sockets, and the connections they are."""

    pid: int
    """The process, as seen from this host's /proc."""
    tid: int
    """The native thread id (py-spy's ``os_thread_id``, ``threading.get_native_id()``)."""
    syscall: str
    fds: tuple[int, ...]
    """The socket fds the thread waits on (an in-process socket pair, such as asyncio's wake-up
    pipe, left out)."""
    ports: tuple[int, ...]
    """The local TCP ports of those fds that are TCP sockets: ``pg_stat_activity.client_port``."""
    backend_pids: tuple[int, ...] = ()
    """For Unix-domain sockets: the pids of the Postgres processes holding the peer end."""
    unresolved: tuple[str, ...] = ()
    """Per fd that could not be resolved, why (e.g. "fd 5: unix socket, peer unknown")."""
    addrs: tuple[str, ...] = ()
    """The local addresses of the TCP sockets, one per entry of ``ports``."""


def socket_waits(pids: Iterable[int], *, servers: Iterable[int] | None = None
                 ) -> tuple[list[SocketWait], list[str]]:
    """Return the threads of ``pids`` blocked in a system call on sockets, and one line per thing that could
    not be read (permission, process gone, unsupported machine), never raising for a vanished process
    or thread.

    ``servers``: the processes that may hold the peer end of a Unix-domain socket (Postgres' backend
    pids, cheapest); by default every process named ``postgres``. Read only when a Unix socket is
    waited on.
    """
    machine = platform.machine()
    table = SYSCALLS.get(machine)
    if table is None:
        return [], [f"socket evidence: the system calls of a {machine} machine are not known"]
    blocked, problems = _blocked_threads(pids, table)
    with contextlib.closing(_Resolver(blocked, servers)) as resolver:
        waits = [wait for thread in blocked if (wait := resolver.wait(thread)) is not None]
    return waits, problems + resolver.problems


def backends_by_socket(waits: Iterable[SocketWait], backends: Iterable[Mapping[str, Any]]
                       ) -> dict[int, SocketWait]:
    """Return backend pid -> the SocketWait of the thread waiting on its connection: matched by
    ``client_port`` and ``client_addr`` (the client socket's local address; a wait without ``addrs``
    matches a loopback ``client_addr``) for TCP, by ``backend_pids`` for Unix sockets. A backend
    whose socket is waited on by two threads is left out (ambiguous)."""
    by_tcp: dict[int, list[tuple[str | None, SocketWait]]] = {}
    by_unix: dict[int, list[SocketWait]] = {}
    for wait in waits:
        for i, port in enumerate(wait.ports):
            by_tcp.setdefault(port, []).append((wait.addrs[i] if i < len(wait.addrs) else None, wait))
        for backend_pid in wait.backend_pids:
            by_unix.setdefault(backend_pid, []).append(wait)
    mapped: dict[int, SocketWait] = {}
    for backend in backends:
        pid = int(backend["pid"])
        client_port, client_addr = backend.get("client_port"), backend.get("client_addr")
        if client_port is not None and int(client_port) > 0 and client_addr:
            candidates = [wait for addr, wait in by_tcp.get(int(client_port), [])
                          if _same_address(addr, str(client_addr))]
        else:
            candidates = by_unix.get(pid, [])
        if len({(w.pid, w.tid) for w in candidates}) == 1:
            mapped[pid] = candidates[0]
    return mapped


def _same_address(local: str | None, client_addr: str) -> bool:
    try:
        client = normal_address(client_addr)
    except ValueError:
        return False  # not an IP address
    return client == local if local is not None else ipaddress.ip_address(client).is_loopback


# Reading the threads of the processes.

@dataclass(frozen=True)
class _Blocked:
    """A thread in a system call on sockets, before its sockets are resolved."""

    pid: int
    tid: int
    syscall: str
    sockets: tuple[tuple[int, int], ...]
    """(fd, socket inode) of each waited fd that is a socket."""


def _blocked_threads(pids: Iterable[int], table: Mapping[int, str]) -> tuple[list[_Blocked], list[str]]:
    blocked: list[_Blocked] = []
    problems: list[str] = []
    for pid in pids:
        try:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        except FileNotFoundError:
            problems.append(f"pid {pid}: process gone")
            continue
        except OSError as exc:
            problems.append(f"pid {pid}: cannot list its threads ({exc.strerror})")
            continue
        denied = ""
        for tid in tids:
            try:
                thread = _blocked_thread(pid, tid, table)
            except PermissionError as exc:
                denied = denied or str(exc.filename or "its threads")
                continue
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended while being read
            except OSError as exc:
                problems.append(f"pid {pid} thread {tid}: {exc.strerror}")
                continue
            if thread is not None:
                blocked.append(thread)
        if denied:
            problems.append(f"pid {pid}: permission denied reading {denied}: {PERMISSION_HINT}")
        elif not os.path.exists(f"/proc/{pid}"):
            problems.append(f"pid {pid}: process gone")
    return blocked, problems


def _blocked_thread(pid: int, tid: int, table: Mapping[int, str]) -> _Blocked | None:
    path = f"/proc/{pid}/task/{tid}/syscall"
    text = _read(path)
    call = parse_syscall(text)
    if call is None or call[0] not in table:
        return None
    name = table[call[0]]
    if name == RESTARTED:
        if "poll" not in _read(f"/proc/{pid}/task/{tid}/wchan"):
            return None  # a sleep or a futex wait resumed, not a poll
        name = "poll"
    try:
        fds = _waited_fds(pid, name, call[1])
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        return None  # an address no longer mapped: the thread moved on
    if _read(path) != text:
        return None  # the thread left the call while its arguments were read
    sockets = []
    for fd in fds:
        try:
            inode = socket_inode(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue  # closed meanwhile
        if inode is not None:
            sockets.append((fd, inode))
    return _Blocked(pid, tid, name, tuple(sockets)) if sockets else None


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def _read_memory(pid: int, address: int, size: int) -> bytes:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return os.pread(fd, size, address)
    finally:
        os.close(fd)


def _waited_fds(pid: int, name: str, args: tuple[int, ...]) -> tuple[int, ...]:
    """Return the fds a thread in system call ``name`` with ``args`` waits on."""
    if name in POLLS:
        return pollfd_fds(_read_memory(pid, args[0], 8 * min(args[1], MAX_FDS))) if args[0] else ()
    if name in SELECTS:
        nfds = min(args[0], MAX_FDS)
        size = (nfds + 63) // 64 * 8
        found: set[int] = set()
        for address in args[1:4]:
            if address:
                found.update(fdset_fds(_read_memory(pid, address, size), nfds))
        return tuple(sorted(found))
    if name in EPOLLS:
        return epoll_targets(_read(f"/proc/{pid}/fdinfo/{args[0]}"))
    return (args[0],) if args[0] < MAX_FDS else ()


# Resolving the sockets: TCP tables, Unix peers and the processes holding them.

class _Resolver:
    """The reads shared by the threads of one call: TCP tables per network namespace, Unix peers
    (netlink) and the servers' sockets."""

    def __init__(self, blocked: list[_Blocked], servers: Iterable[int] | None) -> None:
        self.servers = None if servers is None else sorted(set(servers))
        self.problems: list[str] = []
        self._netlink: socket.socket | None = None
        self._netlink_error = ""
        self._seq = 0
        self._own_namespace = _namespace("self")
        self._namespaces = {pid: _namespace(str(pid)) for pid in {b.pid for b in blocked}}
        self._tcp = self._tcp_tables(blocked)
        self._held: dict[int, set[int]] = {}
        self._owners: dict[int, list[int]] | None = None

    def wait(self, thread: _Blocked) -> SocketWait | None:
        """Return the SocketWait of a blocked thread; None when its only sockets are in-process pairs."""
        kept: list[int] = []
        addrs: list[str] = []
        ports: list[int] = []
        backend_pids: set[int] = set()
        unresolved: list[str] = []
        for fd, inode in thread.sockets:
            local = self._tcp.get(self._namespaces[thread.pid], {}).get(inode)
            if local is not None:
                kept.append(fd)
                addrs.append(local[0])
                ports.append(local[1])
                continue
            peer = self._unix_peer(thread.pid, inode)
            if peer is None:
                kept.append(fd)
                unresolved.append(f"fd {fd}: {self._unknown(thread.pid)}")
            elif not self._holds(thread.pid, peer):  # both ends here (asyncio's wake-up pair): skipped
                kept.append(fd)
                owners = self._owners_of(peer)
                backend_pids.update(owners)
                if not owners:
                    unresolved.append(f"fd {fd}: {UNIX_PEER_UNKNOWN} (no Postgres process holds its peer)")
        if not kept:
            return None
        return SocketWait(pid=thread.pid, tid=thread.tid, syscall=thread.syscall, fds=tuple(kept),
                          ports=tuple(ports), backend_pids=tuple(sorted(backend_pids)),
                          unresolved=tuple(unresolved), addrs=tuple(addrs))

    def _tcp_tables(self, blocked: list[_Blocked]) -> dict[str, dict[int, tuple[str, int]]]:
        """inode -> local (address, port) of the waited TCP sockets, per network namespace: from the
        kernel's inet_diag dump in this process' namespace (a few ms for a thousand sockets, where
        /proc/net/tcp takes five times longer), else from /proc/<pid>/net/tcp and tcp6."""
        wanted: dict[str, set[int]] = {}
        reader: dict[str, int] = {}
        for thread in blocked:
            namespace = self._namespaces[thread.pid]
            wanted.setdefault(namespace, set()).update(inode for _, inode in thread.sockets)
            reader.setdefault(namespace, thread.pid)
        tables: dict[str, dict[int, tuple[str, int]]] = {}
        for namespace, inodes in wanted.items():
            if namespace == self._own_namespace:
                try:
                    tables[namespace] = _inet_diag_table(inodes)
                    continue
                except OSError:
                    pass  # no inet_diag in this kernel: the text tables
            table: dict[int, tuple[str, int]] = {}
            for name in ("tcp", "tcp6"):
                try:
                    table.update(tcp_table(_read(f"/proc/{reader[namespace]}/net/{name}"), inodes))
                except FileNotFoundError:
                    continue  # no IPv6, or the process is gone
            tables[namespace] = table
        return tables

    def _unknown(self, pid: int) -> str:
        if self._netlink_error:
            return f"{UNIX_PEER_UNKNOWN} ({self._netlink_error})"
        if self._namespaces[pid] != self._own_namespace:
            return f"{UNIX_PEER_UNKNOWN} (its process is in another network namespace)"
        return "neither a connected TCP socket nor a connected Unix socket"

    def _unix_peer(self, pid: int, inode: int) -> int | None:
        """The peer of Unix socket ``inode`` by the kernel's sock_diag (this namespace only)."""
        if self._netlink_error or self._namespaces[pid] != self._own_namespace:
            return None
        try:
            if self._netlink is None:
                self._netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
                self._netlink.settimeout(1.0)
            self._seq += 1
            self._netlink.send(unix_diag_request(inode, self._seq))
            return unix_diag_peer(self._netlink.recv(65536))
        except OSError as exc:
            self._netlink_error = f"sock_diag netlink: {exc.strerror or exc}"
            self.problems.append(f"Unix socket peers cannot be read: {self._netlink_error}")
            return None

    def _holds(self, pid: int, inode: int) -> bool:
        if pid not in self._held:
            self._held[pid] = _socket_inodes(pid)
        return inode in self._held[pid]

    def _owners_of(self, inode: int) -> list[int]:
        """The pids of the servers (by default: processes named postgres) holding socket ``inode``."""
        if self._owners is None:
            self._owners = {}
            denied = 0
            for pid in self.servers if self.servers is not None else _named("postgres"):
                try:
                    held = _socket_inodes(pid, strict=True)
                except PermissionError:
                    denied += 1
                    continue
                for held_inode in held:
                    self._owners.setdefault(held_inode, []).append(pid)
            if denied:
                self.problems.append(f"the sockets of {denied} Postgres processes cannot be read "
                                     f"(permission denied): {PERMISSION_HINT}")
        return self._owners.get(inode, [])

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()


def _namespace(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return f"unknown namespace of {pid}"


def _inet_diag_table(inodes: set[int]) -> dict[int, tuple[str, int]]:
    """inode -> local (address, port) of the TCP sockets among ``inodes``, by an inet_diag dump."""
    table: dict[int, tuple[str, int]] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(2.0)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            sock.send(inet_diag_request(family, seq))
            done = False
            while not done:
                done = inet_diag_sockets(sock.recv(1 << 17), inodes, table)
    return table


def _socket_inodes(pid: int, strict: bool = False) -> set[int]:
    """Return the socket inodes process ``pid`` holds; empty when it is gone (or, unless ``strict``,
    unreadable)."""
    found: set[int] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                inode = socket_inode(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except FileNotFoundError:
                continue
            if inode is not None:
                found.add(inode)
    except PermissionError:
        if strict:
            raise
    except FileNotFoundError:
        pass
    return found


def _named(comm: str) -> list[int]:
    """Return the pids of processes whose command name is ``comm``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _read(f"/proc/{entry}/comm").strip() == comm:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids
