"""The Linux formats that socket evidence reads, as pure functions: a thread's system call line, the
``pollfd`` array and fd sets in its memory, an epoll instance's fdinfo, an fd's link, the
``/proc/net/tcp`` tables and the kernel's sock_diag netlink messages (contend/sample/sockets.py
does the reading).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Container

# System call numbers by machine (Linux' syscall tables); a machine not listed yields no evidence.
SYSCALLS: dict[str, dict[int, str]] = {
    "x86_64": {
        0: "read", 1: "write", 7: "poll", 19: "readv", 20: "writev", 23: "select", 44: "sendto",
        45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 219: "restart_syscall", 232: "epoll_wait",
        270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 299: "recvmmsg", 441: "epoll_pwait2",
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
RESTARTED = "restart_syscall"
"""A call interrupted (a blocking py-spy dump stops the thread) and resumed by the kernel: x86-64's
``poll`` comes back as this, with the registers, and so /proc's arguments, of the first call. Which
call it resumes is read from ``/proc/<pid>/task/<tid>/wchan``: ``poll_schedule_timeout`` for poll."""
MAX_FDS = 1 << 16
"""At most this many pollfd entries or fd-set bits are read: more is not a client's wait."""


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


def tcp_table(text: str, inodes: Container[int] | None = None) -> dict[int, tuple[str, int]]:
    """Return inode -> (local address, local port) from ``/proc/net/tcp`` or ``tcp6`` text, for the
    sockets among ``inodes`` (None: all).

    Addresses are hex words in the host's byte order (little-endian on the machines of SYSCALLS).
    """
    table: dict[int, tuple[str, int]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or (inodes is not None and int(fields[9]) not in inodes):
            continue
        addr_hex, port_hex = fields[1].split(":")
        raw = b"".join(bytes.fromhex(addr_hex[i:i + 8])[::-1] for i in range(0, len(addr_hex), 8))
        table[int(fields[9])] = (normal_address(str(ipaddress.ip_address(raw))), int(port_hex, 16))
    return table


# The kernel's sock_diag interface (linux/sock_diag.h, linux/unix_diag.h, linux/inet_diag.h).
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
UDIAG_SHOW_PEER = 4
UNIX_DIAG_PEER = 2
NO_COOKIE = 0xFFFFFFFF
TCP_CONNECTED = (1 << 1) | (1 << 8)
"""ESTABLISHED and CLOSE_WAIT (the server has gone): the states of a client's open connection."""


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


def inet_diag_request(family: int, seq: int, states: int = TCP_CONNECTED) -> bytes:
    """Return the netlink message asking for a dump of the TCP sockets of ``family`` in ``states``."""
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, states) + bytes(48)
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq,
                       0) + body


def inet_diag_sockets(data: bytes, inodes: Container[int], table: dict[int, tuple[str, int]]) -> bool:
    """Add inode -> (local address, port) to ``table`` for the sockets of an inet_diag reply among
    ``inodes``; return whether the dump is done. struct inet_diag_msg: family, state, timer, retrans
    (4 bytes), sockid (sport, dport big-endian, src[16], dst[16], if, cookie[2]), expires, rqueue,
    wqueue, uid, inode."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            errno = -struct.unpack_from("=i", data, offset + 16)[0]
            raise OSError(errno, os.strerror(errno))
        msg = offset + 16
        inode = struct.unpack_from("=I", data, msg + 68)[0]
        if inode in inodes:
            size = 4 if data[msg] == socket.AF_INET else 16
            address = ipaddress.ip_address(data[msg + 8:msg + 8 + size])
            table[inode] = (normal_address(str(address)), struct.unpack_from(">H", data, msg + 4)[0])
        offset += (length + 3) & ~3
    return False
