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
import ipaddress
import os
import platform
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# System call numbers by machine (Linux' syscall tables); a machine not listed yields no evidence.
SYSCALLS: dict[str, dict[int, str]] = {
    "x86_64": {
        0: "read", 1: "write", 7: "poll", 19: "readv", 20: "writev", 23: "select", 44: "sendto",
        45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 232: "epoll_wait", 270: "pselect6", 271: "ppoll",
        281: "epoll_pwait", 299: "recvmmsg", 441: "epoll_pwait2",
    },
    "aarch64": {  # the generic table: no poll, select or epoll_wait of its own
        22: "epoll_pwait", 63: "read", 64: "write", 65: "readv", 66: "writev", 72: "pselect6",
        73: "ppoll", 206: "sendto", 207: "recvfrom", 211: "sendmsg", 212: "recvmsg", 243: "recvmmsg",
        441: "epoll_pwait2",
    },
}
POLLS = {"poll", "ppoll"}
SELECTS = {"select", "pselect6"}
EPOLLS = {"epoll_wait", "epoll_pwait", "epoll_pwait2"}
MAX_FDS = 1 << 16
"""At most this many pollfd entries or fd-set bits are read: more is not a client's wait."""

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
    pids); by default every process named ``postgres``. Only read when a Unix socket is waited on.
    """
    machine = platform.machine()
    table = SYSCALLS.get(machine)
    if table is None:
        return [], [f"socket evidence: the system calls of a {machine} machine are not known"]
    with contextlib.closing(_Reader(servers)) as reader:
        waits, problems = _collect(pids, table, reader)
    return waits, problems + reader.problems


def _collect(pids: Iterable[int], table: Mapping[int, str], reader: _Reader
             ) -> tuple[list[SocketWait], list[str]]:
    waits: list[SocketWait] = []
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
                wait = _thread_wait(pid, tid, table, reader)
            except PermissionError as exc:
                denied = denied or f"{exc.filename or 'its threads'}"
                continue
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended while being read
            except OSError as exc:
                problems.append(f"pid {pid} thread {tid}: {exc.strerror}")
                continue
            if wait is not None:
                waits.append(wait)
        if denied:
            problems.append(f"pid {pid}: permission denied reading {denied}: {PERMISSION_HINT}")
        if not os.path.exists(f"/proc/{pid}"):
            problems.append(f"pid {pid}: process gone")
    return waits, problems


def backends_by_socket(waits: Iterable[SocketWait], backends: Iterable[Mapping[str, Any]]
                       ) -> dict[int, SocketWait]:
    """Return backend pid -> the SocketWait of the thread waiting on its connection: matched by
    ``client_port`` and ``client_addr`` (the client socket's local address) for TCP, by
    ``backend_pids`` for Unix sockets. A backend whose socket is waited on by two threads is left out
    (ambiguous)."""
    by_tcp: dict[tuple[str, int], list[SocketWait]] = {}
    by_unix: dict[int, list[SocketWait]] = {}
    for wait in waits:
        for addr, port in zip(wait.addrs, wait.ports, strict=False):
            by_tcp.setdefault((addr, port), []).append(wait)
        for backend_pid in wait.backend_pids:
            by_unix.setdefault(backend_pid, []).append(wait)
    mapped: dict[int, SocketWait] = {}
    for backend in backends:
        pid = int(backend["pid"])
        client_port, client_addr = backend.get("client_port"), backend.get("client_addr")
        if client_port is not None and int(client_port) > 0 and client_addr:
            candidates = by_tcp.get((normal_address(str(client_addr)), int(client_port)), [])
        else:
            candidates = by_unix.get(pid, [])
        if len({(w.pid, w.tid) for w in candidates}) == 1:
            mapped[pid] = candidates[0]
    return mapped


# Pure helpers: the formats of /proc and of the kernel's structures.

def parse_syscall(text: str) -> tuple[int, tuple[int, ...]] | None:
    """Return (number, six arguments) from a ``/proc/.../syscall`` line; None when the thread runs
    or is not in a system call."""
    fields = text.split()
    if len(fields) < 7 or not fields[0].isdigit():
        return None
    return int(fields[0]), tuple(int(arg, 16) for arg in fields[1:7])


def pollfd_fds(data: bytes) -> tuple[int, ...]:
    """Return the fds of an array of ``struct pollfd {int fd; short events; short revents;}``; a
    negative fd (ignored by poll) is left out."""
    usable = len(data) - len(data) % 8
    return tuple(fd for fd, _, _ in struct.iter_unpack("=ihh", data[:usable]) if fd >= 0)


def fdset_fds(data: bytes, nfds: int) -> tuple[int, ...]:
    """Return the fds below ``nfds`` set in an ``fd_set`` bitmap (an array of little-endian longs)."""
    bits = int.from_bytes(data, "little")
    return tuple(fd for fd in range(min(nfds, len(data) * 8)) if bits >> fd & 1)


def epoll_targets(fdinfo: str) -> tuple[int, ...]:
    """Return the fds registered in an epoll instance, from the ``tfd:`` lines of its fdinfo."""
    return tuple(int(line.split()[1]) for line in fdinfo.splitlines() if line.startswith("tfd:"))


def socket_inode(link: str) -> int | None:
    """Return the inode of an fd's link text ``socket:[INODE]``; None for anything but a socket."""
    if link.startswith("socket:[") and link.endswith("]"):
        return int(link[8:-1])
    return None


def normal_address(addr: str) -> str:
    """Return an IP address as Postgres prints it, an IPv4-mapped IPv6 address as IPv4."""
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def tcp_table(text: str) -> dict[int, tuple[str, int]]:
    """Return inode -> (local address, local port) from ``/proc/net/tcp`` or ``tcp6`` text.

    Addresses are hex words in the host's byte order (little-endian on the machines of SYSCALLS).
    """
    table: dict[int, tuple[str, int]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        addr_hex, port_hex = fields[1].split(":")
        raw = b"".join(bytes.fromhex(addr_hex[i:i + 8])[::-1] for i in range(0, len(addr_hex), 8))
        table[int(fields[9])] = (normal_address(str(ipaddress.ip_address(raw))), int(port_hex, 16))
    return table


# The kernel's sock_diag interface for Unix sockets (linux/sock_diag.h, linux/unix_diag.h).
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
UDIAG_SHOW_PEER = 4
UNIX_DIAG_PEER = 2
NO_COOKIE = 0xFFFFFFFF


def unix_diag_request(inode: int, seq: int) -> bytes:
    """Return the netlink message asking for the peer of the Unix socket ``inode``."""
    body = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, inode, UDIAG_SHOW_PEER,
                       NO_COOKIE, NO_COOKIE)
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body


def unix_diag_peer(reply: bytes) -> int | None:
    """Return the peer inode from a sock_diag reply; None for an error (not a Unix socket of this
    network namespace) or a socket without a peer."""
    length, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR or length < 32:
        return None
    offset = 32  # nlmsghdr (16) + struct unix_diag_msg (16), then rtattrs
    while offset + 4 <= length:
        size, attr = struct.unpack_from("=HH", reply, offset)
        if size < 4:
            break
        if attr == UNIX_DIAG_PEER and size >= 8:
            return int(struct.unpack_from("=I", reply, offset + 4)[0])
        offset += (size + 3) & ~3
    return None


# The reads, cached for one call of socket_waits.

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


def _thread_wait(pid: int, tid: int, table: Mapping[int, str], reader: _Reader) -> SocketWait | None:
    path = f"/proc/{pid}/task/{tid}/syscall"
    text = _read(path)
    call = parse_syscall(text)
    if call is None or call[0] not in table:
        return None
    name = table[call[0]]
    try:
        fds = _waited_fds(pid, name, call[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as exc:
        if isinstance(exc, PermissionError):
            raise
        return None  # an address no longer mapped: the thread moved on
    if _read(path) != text:
        return None  # the thread left the call while its arguments were read
    sockets = [(fd, inode) for fd in fds if (inode := reader.socket_inode(pid, fd)) is not None]
    if not sockets:
        return None
    kept: list[int] = []
    addrs: list[str] = []
    ports: list[int] = []
    backend_pids: list[int] = []
    unresolved: list[str] = []
    for fd, inode in sockets:
        local = reader.tcp(pid).get(inode)
        if local is not None:
            kept.append(fd)
            addrs.append(local[0])
            ports.append(local[1])
            continue
        peer = reader.unix_peer(inode)
        if peer is None:
            kept.append(fd)
            unresolved.append(f"fd {fd}: {reader.unix_failure(inode)}")
            continue
        if reader.holds(pid, peer):
            continue  # both ends in this process (asyncio's wake-up pair): not a connection
        owners = reader.owners(peer)
        kept.append(fd)
        if owners:
            backend_pids.extend(owners)
        else:
            unresolved.append(f"fd {fd}: {UNIX_PEER_UNKNOWN} (no Postgres process holds peer socket {peer})")
    if not kept:
        return None
    return SocketWait(pid=pid, tid=tid, syscall=name, fds=tuple(kept), ports=tuple(ports),
                      backend_pids=tuple(sorted(set(backend_pids))), unresolved=tuple(unresolved),
                      addrs=tuple(addrs))


class _Reader:
    """The reads shared by the threads of one call: fd links, TCP tables, Unix peers and owners."""

    def __init__(self, servers: Iterable[int] | None) -> None:
        self.servers = None if servers is None else sorted(set(servers))
        self.problems: list[str] = []
        self._links: dict[int, dict[int, int]] = {}
        self._tcp: dict[str, dict[int, tuple[str, int]]] = {}
        self._peers: dict[int, int | None] = {}
        self._owners: dict[int, list[int]] | None = None
        self._netlink: socket.socket | None = None
        self._netlink_error = ""
        self._seq = 0

    def socket_inode(self, pid: int, fd: int) -> int | None:
        try:
            return socket_inode(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            return None

    def holds(self, pid: int, inode: int) -> bool:
        """Whether process ``pid`` holds socket ``inode`` (read once per process)."""
        if pid not in self._links:
            self._links[pid] = _socket_fds(pid)
        return inode in self._links[pid]

    def tcp(self, pid: int) -> dict[int, tuple[str, int]]:
        """The TCP sockets of ``pid``'s network namespace, read once per namespace."""
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            namespace = f"pid {pid}"
        if namespace not in self._tcp:
            table: dict[int, tuple[str, int]] = {}
            for name in ("tcp", "tcp6"):
                try:
                    table.update(tcp_table(_read(f"/proc/{pid}/net/{name}")))
                except FileNotFoundError:
                    continue  # no IPv6 in this kernel
            self._tcp[namespace] = table
        return self._tcp[namespace]

    def unix_peer(self, inode: int) -> int | None:
        if inode not in self._peers:
            self._peers[inode] = self._ask_peer(inode)
        return self._peers[inode]

    def unix_failure(self, inode: int) -> str:
        if self._netlink_error:
            return f"{UNIX_PEER_UNKNOWN} ({self._netlink_error})"
        return "neither a TCP socket nor a connected Unix socket of this network namespace"

    def _ask_peer(self, inode: int) -> int | None:
        if self._netlink_error:
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

    def owners(self, inode: int) -> list[int]:
        """The pids of the servers (by default: processes named postgres) holding socket ``inode``."""
        if self._owners is None:
            self._owners = {}
            servers = self.servers if self.servers is not None else _named("postgres")
            denied = 0
            for pid in servers:
                try:
                    held = _socket_fds(pid, strict=True)
                except PermissionError:
                    denied += 1
                    continue
                for held_inode in held:
                    self._owners.setdefault(held_inode, []).append(pid)
            if denied:
                self.problems.append(f"{denied} Postgres processes' sockets cannot be read (permission "
                                     f"denied): {PERMISSION_HINT}")
        return self._owners.get(inode, [])

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()


def _socket_fds(pid: int, strict: bool = False) -> dict[int, int]:
    """Return socket inode -> fd of process ``pid``; empty when it is gone (or, unless ``strict``,
    unreadable)."""
    found: dict[int, int] = {}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                inode = socket_inode(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except FileNotFoundError:
                continue
            if inode is not None:
                found[inode] = int(fd)
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
