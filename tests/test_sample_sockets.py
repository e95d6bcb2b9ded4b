"""Socket evidence: a thread blocked on its Postgres connection is found from /proc and its backend
mapped to it, with no application_name anywhere.

Each integration test holds row id=1 of sock_rows in an open transaction and lets a real thread (or
an event loop, or a gevent hub) wait for it in ``SELECT ... FOR UPDATE``; the backend's pid must then
map to that thread's native id through the socket it waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.waiting
import pytest
from psycopg.rows import dict_row

from contend.sample import pyspy
from contend.sample.procfs import (
    SYSCALLS,
    epoll_targets,
    fdset_fds,
    inet_diag_request,
    inet_diag_sockets,
    parse_syscall,
    pollfd_fds,
    tcp_table,
    unix_diag_peer,
)
from contend.sample.sockets import SocketWait, backends_by_socket, socket_waits
from contend.stack import postgres
from tests.conftest import wait_for

ROW_LOCK = "SELECT id FROM sock_rows WHERE id = 1 FOR UPDATE"


# The formats read, on known bytes.

def test_syscall_line_parsed_and_a_running_thread_is_none() -> None:
    line = "7 0x7f0010 0x2 0xffffffff 0x0 0x0 0x0 0x7ffc10 0x7f0aa1\n"
    assert parse_syscall(line) == (7, (0x7F0010, 2, 0xFFFFFFFF, 0, 0, 0))
    assert parse_syscall("running\n") is None
    assert parse_syscall("-1 0x7ffc10 0x7f0aa1\n") is None


def test_pollfd_array_and_fd_sets() -> None:
    pollfds = struct.pack("=ihh", 5, 1, 0) + struct.pack("=ihh", -1, 1, 0) + struct.pack("=ihh", 70, 4, 0)
    assert pollfd_fds(pollfds) == (5, 70)
    bitmap = ((1 << 3) | (1 << 64) | (1 << 100)).to_bytes(16, "little")
    assert fdset_fds(bitmap, 101) == (3, 64, 100)
    assert fdset_fds(bitmap, 64) == (3,)  # bits at or above nfds are not waited on


def test_epoll_targets_from_fdinfo() -> None:
    fdinfo = ("pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n"
              "tfd:        7 events:       19 data:                7  pos:0 ino:1dd84 sdev:8\n"
              "tfd:       12 events:       19 data:                c  pos:0 ino:1dd90 sdev:8\n")
    assert epoll_targets(fdinfo) == (7, 12)


def test_tcp_tables_give_local_address_and_port() -> None:
    header = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout"
              " inode\n")
    tcp = header + ("   0: 0100007F:D431 0100007F:1538 01 00000000:00000000 00:00000000 00000000     0"
                    "        0 4242 1 0000000000000000 20 4 30 10 -1\n")
    mapped = "0000000000000000FFFF00000100007F"  # ::ffff:127.0.0.1
    tcp6 = header + (f"   0: {mapped}:9C40 00000000000000000000000001000000:1538 01 00000000:00000000"
                     " 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n"
                     "   1: 00000000000000000000000001000000:9C41 00000000000000000000000001000000:1538 01"
                     " 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000\n")
    assert tcp_table(tcp) == {4242: ("127.0.0.1", 0xD431)}
    assert tcp_table(tcp6) == {4343: ("127.0.0.1", 0x9C40), 4444: ("::1", 0x9C41)}


def test_unix_diag_reply_gives_the_peer() -> None:
    attrs = struct.pack("=HHI", 8, 2, 9001)  # UNIX_DIAG_PEER
    body = struct.pack("=BBBBIII", socket.AF_UNIX, socket.SOCK_STREAM, 1, 0, 9000, 0, 0) + attrs
    assert unix_diag_peer(struct.pack("=IHHII", 16 + len(body), 20, 0, 1, 0) + body) == 9001
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -2) + bytes(16)
    assert unix_diag_peer(error) is None


def test_inet_diag_dump_gives_the_local_address_of_the_wanted_sockets() -> None:
    request = inet_diag_request(socket.AF_INET6, 7)
    assert struct.unpack_from("=IHHI", request) == (len(request), 20, 0x301, 7) and len(request) == 72

    def message(family: int, src: bytes, sport: int, inode: int) -> bytes:
        sockid = struct.pack(">HH", sport, 5432) + src.ljust(16, b"\0") + bytes(16) + bytes(12)
        body = struct.pack("=BBBB", family, 1, 0, 0) + sockid + struct.pack("=IIIII", 0, 0, 0, 0, inode)
        return struct.pack("=IHHII", 16 + len(body), 20, 2, 7, 0) + body

    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")
    data = (message(socket.AF_INET, bytes([127, 0, 0, 1]), 40001, 11)
            + message(socket.AF_INET6, mapped, 40002, 12) + message(socket.AF_INET, bytes(4), 40003, 13))
    table: dict[int, tuple[str, int]] = {}
    assert inet_diag_sockets(data, {11, 12}, table) is False  # more parts to come
    assert table == {11: ("127.0.0.1", 40001), 12: ("127.0.0.1", 40002)}
    assert inet_diag_sockets(struct.pack("=IHHII", 20, 3, 2, 7, 0) + bytes(4), {11}, table) is True


def test_a_backend_waited_on_by_two_threads_is_left_out() -> None:
    one = SocketWait(pid=10, tid=11, syscall="poll", fds=(5,), ports=(40000,), addrs=("127.0.0.1",))
    two = SocketWait(pid=10, tid=12, syscall="epoll_wait", fds=(5, 6), ports=(40000, 40001),
                     addrs=("127.0.0.1", "127.0.0.1"))
    unix = SocketWait(pid=10, tid=13, syscall="poll", fds=(7,), ports=(), backend_pids=(303,))
    backends = [{"pid": 301, "client_addr": "127.0.0.1", "client_port": 40000},
                {"pid": 302, "client_addr": "127.0.0.1", "client_port": 40001},
                {"pid": 303, "client_addr": None, "client_port": -1},
                {"pid": 304, "client_addr": "10.1.2.3", "client_port": 40001}]
    assert backends_by_socket([one, two, unix], backends) == {302: two, 303: unix}
    # A wait built without local addresses matches a loopback client only.
    bare = SocketWait(pid=10, tid=14, syscall="poll", fds=(8,), ports=(40005,))
    clients = [{"pid": 305, "client_addr": "::1", "client_port": 40005},
               {"pid": 306, "client_addr": "192.0.2.7", "client_port": 40005},
               {"pid": 307, "client_addr": "not an address", "client_port": 40005}]
    assert backends_by_socket([bare], clients) == {305: bare}


# Threads of this process, no Postgres needed.

def _in_syscall(tid: int, number: int) -> bool:
    parsed = parse_syscall(Path(f"/proc/self/task/{tid}/syscall").read_text())
    return parsed is not None and parsed[0] == number


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers of x86-64")
def test_threads_on_a_lock_or_an_in_process_socket_pair_are_not_socket_waits() -> None:
    lock = threading.Lock()
    lock.acquire()
    left, right = socket.socketpair()
    tids: dict[str, int] = {}

    def on_lock() -> None:
        tids["lock"] = threading.get_native_id()
        with lock:
            pass

    def on_pair() -> None:
        tids["pair"] = threading.get_native_id()
        right.recv(1)

    threads = [threading.Thread(target=on_lock, daemon=True), threading.Thread(target=on_pair, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(tids) == 2 and _in_syscall(tids["lock"], 202) and _in_syscall(tids["pair"], 45))
        waits, problems = socket_waits([os.getpid()])
        assert problems == []
        assert {tids["lock"], tids["pair"]}.isdisjoint(w.tid for w in waits)
    finally:
        lock.release()
        left.send(b"x")
        for thread in threads:
            thread.join(10)
        left.close()
        right.close()


def test_a_vanished_process_is_a_line_not_an_exception() -> None:
    pid = 2**22 + 12345  # above the default pid_max
    assert socket_waits([pid]) == ([], [f"pid {pid}: process gone"])


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root, to read another user's process without the capability to")
def test_without_ptrace_rights_the_reads_become_a_line(sample_dsn: str) -> None:
    # Postgres' backends run as another user (the stack's server user when tests run as root) and
    # wait in epoll_wait on their client's socket; root without capabilities may not read them.
    with psycopg.connect(sample_dsn) as conn:
        backend = conn.info.backend_pid
        script = ("import json, sys; from contend.sample.sockets import socket_waits; "
                  "print(json.dumps(socket_waits([int(sys.argv[1])])))")
        unprivileged = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", script]
        out = subprocess.run([*unprivileged, str(backend)], capture_output=True, text=True, check=True)
        waits, problems = json.loads(out.stdout)
        assert waits == [] and len(problems) == 1
        assert problems[0].startswith(f"pid {backend}: permission denied reading /proc/{backend}/task/")
        assert problems[0].endswith("(the rights py-spy needs)")
        # With the rights, the backend itself is seen waiting on its client's socket.
        own, problems = socket_waits([backend])
        assert problems == [] and [w.syscall[:5] for w in own] == ["epoll"]


@pytest.mark.integration
def test_a_thread_in_a_plain_socket_read_is_seen_with_its_local_port(sample_dsn: str) -> None:
    # A connection to Postgres that has not sent its start-up packet yet: the server waits for it,
    # and so does this thread's recv.
    port = int(sample_dsn.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.settimeout(None)  # a blocking socket: recv is one recvfrom call (with a timeout, a poll first)
        tids: list[int] = []

        def read() -> None:
            tids.append(threading.get_native_id())
            with contextlib.suppress(OSError):
                conn.recv(1)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()

        def seen() -> list[SocketWait]:
            waits, _ = socket_waits([os.getpid()])
            return [w for w in waits if tids and w.tid == tids[0]]

        found = wait_for(seen)
        assert isinstance(found, list)
        (wait,) = found
        assert wait.syscall == "recvfrom"
        assert (wait.addrs, wait.ports, wait.unresolved) == (("127.0.0.1",), (conn.getsockname()[1],), ())
        conn.shutdown(socket.SHUT_RDWR)
        thread.join(10)


# Real threads waiting for a row lock in real Postgres.

@contextlib.contextmanager
def row_held(dsn: str) -> Iterator[str]:
    """Row id=1 of sock_rows locked by an open transaction; yields the DSN."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS sock_rows (id int PRIMARY KEY)")
        conn.execute("INSERT INTO sock_rows VALUES (1) ON CONFLICT DO NOTHING")
    with psycopg.connect(dsn) as holder:
        holder.execute(ROW_LOCK)
        yield dsn
        holder.rollback()


@pytest.fixture()
def held_row(sample_dsn: str) -> Iterator[str]:
    with row_held(sample_dsn) as dsn:
        yield dsn


def backends(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        sql = ("SELECT pid, host(client_addr) AS client_addr, client_port, wait_event_type "
               "FROM pg_stat_activity WHERE backend_type = 'client backend'")
        return conn.execute(sql).fetchall()


def lock_waiting(dsn: str, pids: list[int]) -> bool:
    waiting = {b["pid"] for b in backends(dsn) if b["wait_event_type"] == "Lock"}
    return bool(pids) and set(pids) <= waiting


def mapped(dsn: str, pid: int, backend_pids: list[int]) -> dict[int, SocketWait] | None:
    """Backend pid -> socket wait for each of ``backend_pids``, once all are mapped (else None)."""
    waits, problems = socket_waits([pid])
    assert problems == []
    found = backends_by_socket(waits, backends(dsn))
    return found if set(backend_pids) <= set(found) else None


class Waiter:
    """A thread that opens a connection with ``connect`` (returning its backend pid, a function that
    runs a statement and one that closes it), then waits for the held row."""

    def __init__(self, connect: Callable[[], tuple[int, Callable[[str], object], Callable[[], object]]]
                 ) -> None:
        self.connect = connect
        self.errors: list[BaseException] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), self.errors

    def _run(self) -> None:
        self.native_id = threading.get_native_id()
        try:
            self.backend_pid, execute, close = self.connect()
        except BaseException as exc:
            self.errors.append(exc)
            raise
        self.ready.set()
        try:
            execute(ROW_LOCK)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            close()


def psycopg3(dsn: str) -> tuple[int, Callable[[str], object], Callable[[], object]]:
    conn = psycopg.connect(dsn)
    return conn.info.backend_pid, conn.execute, conn.close


def psycopg2_(dsn: str) -> tuple[int, Callable[[str], object], Callable[[], object]]:
    import psycopg2

    conn = psycopg2.connect(dsn)
    return conn.get_backend_pid(), conn.cursor().execute, conn.close


@contextlib.contextmanager
def waiting(held: str, connect: Callable[[str], Any], holder: psycopg.Connection[Any] | None = None
            ) -> Iterator[Waiter]:
    waiter = Waiter(lambda: connect(held))
    try:
        wait_for(lambda: lock_waiting(held, [waiter.backend_pid]))
        yield waiter
    finally:
        # The holder's transaction ends after the test: the waiter's statement is cancelled now.
        with psycopg.connect(held, autocommit=True) as admin:
            admin.execute("SELECT pg_cancel_backend(%s)", (waiter.backend_pid,))
        waiter.thread.join(30)


WAITS = {"c": None, "poll": psycopg.waiting.wait_poll, "epoll": psycopg.waiting.wait_epoll,
         "select": psycopg.waiting.wait_select, "selector": psycopg.waiting.wait_selector}


@pytest.mark.integration
@pytest.mark.parametrize("wait", list(WAITS))
def test_psycopg3_thread_waiting_for_a_row_lock_is_mapped(held_row: str, wait: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if WAITS[wait] is None:
        assert psycopg.waiting.wait is psycopg.waiting.wait_c, "psycopg's C wait is the default"
    else:
        monkeypatch.setattr(psycopg.waiting, "wait", WAITS[wait])
    with waiting(held_row, psycopg3) as waiter:
        found = wait_for(lambda: mapped(held_row, os.getpid(), [waiter.backend_pid]))
        assert isinstance(found, dict)
        wait_ = found[waiter.backend_pid]
        assert (wait_.pid, wait_.tid) == (os.getpid(), waiter.native_id)
        assert wait_.unresolved == ()


@pytest.mark.integration
def test_psycopg2_thread_waiting_for_a_row_lock_is_mapped(held_row: str) -> None:
    with waiting(held_row, psycopg2_) as waiter:
        found = wait_for(lambda: mapped(held_row, os.getpid(), [waiter.backend_pid]))
        assert isinstance(found, dict)
        assert found[waiter.backend_pid].tid == waiter.native_id
        assert found[waiter.backend_pid].syscall in {"poll", "ppoll", "select", "pselect6"}


@pytest.mark.integration
@pytest.mark.skipif(platform.machine() != "x86_64", reason="poll is resumed as restart_syscall on x86-64")
def test_a_wait_interrupted_by_a_blocking_dump_is_still_seen_on_its_socket(held_row: str) -> None:
    """A blocking py-spy dump stops every thread: libpq's poll() comes back as restart_syscall, with the
    arguments of the first call."""
    with waiting(held_row, psycopg2_) as waiter:
        wait_for(lambda: mapped(held_row, os.getpid(), [waiter.backend_pid]))
        pyspy.dump(os.getpid())

        def resumed() -> bool:  # the thread runs for a moment after the dump lets it go
            call = parse_syscall(Path(f"/proc/{os.getpid()}/task/{waiter.native_id}/syscall").read_text())
            return call is not None and SYSCALLS["x86_64"].get(call[0]) == "restart_syscall"

        wait_for(resumed)
        found = mapped(held_row, os.getpid(), [waiter.backend_pid])
        assert found is not None and found[waiter.backend_pid].tid == waiter.native_id


@pytest.mark.integration
def test_asyncio_loop_thread_maps_to_every_backend_it_waits_on(held_row: str) -> None:
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()

    async def open_and_wait() -> tuple[int, asyncio.Task[Any], psycopg.AsyncConnection[Any]]:
        conn = await psycopg.AsyncConnection.connect(held_row)
        return conn.info.backend_pid, asyncio.ensure_future(conn.execute(ROW_LOCK)), conn

    async def loop_native_id() -> int:
        return threading.get_native_id()

    opened = [asyncio.run_coroutine_threadsafe(open_and_wait(), loop).result(30) for _ in range(2)]
    pids = [pid for pid, _, _ in opened]
    try:
        wait_for(lambda: lock_waiting(held_row, pids))
        tid = asyncio.run_coroutine_threadsafe(loop_native_id(), loop).result(30)
        found = wait_for(lambda: mapped(held_row, os.getpid(), pids))
        assert isinstance(found, dict)
        assert {found[pid].tid for pid in pids} == {tid}
        assert found[pids[0]].syscall.startswith("epoll")
    finally:
        with psycopg.connect(held_row, autocommit=True) as admin:
            for pid in pids:
                admin.execute("SELECT pg_cancel_backend(%s)", (pid,))

        async def close() -> None:
            for _, task, conn in opened:
                with contextlib.suppress(psycopg.Error):
                    await task
                await conn.close()

        asyncio.run_coroutine_threadsafe(close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(30)
        loop.close()


GEVENT_CLIENT = '''
from gevent import monkey
monkey.patch_all()
import json, os, sys, threading
import gevent, psycopg

dsn, info_path = os.environ["SAMPLE_DSN"], sys.argv[1]
conns = [psycopg.connect(dsn) for _ in range(2)]
for conn in conns:
    gevent.spawn(conn.execute, "SELECT id FROM sock_rows WHERE id = 1 FOR UPDATE")
info = {"pid": os.getpid(), "tid": threading.get_native_id(), "backends": [c.info.backend_pid for c in conns]}
open(info_path + ".tmp", "w").write(json.dumps(info))
os.rename(info_path + ".tmp", info_path)
gevent.sleep(600)
'''


@pytest.mark.integration
def test_gevent_hub_maps_to_the_backends_of_its_greenlets(held_row: str, tmp_path: Path) -> None:
    pytest.importorskip("gevent")
    script, info_path = tmp_path / "gevent_client.py", tmp_path / "info.json"
    script.write_text(GEVENT_CLIENT)
    proc = subprocess.Popen([sys.executable, str(script), str(info_path)],
                            env={"SAMPLE_DSN": held_row, "PATH": "/usr/bin:/bin"})
    try:
        wait_for(info_path.exists, timeout=30)
        info = json.loads(info_path.read_text())
        wait_for(lambda: lock_waiting(held_row, info["backends"]))
        found = wait_for(lambda: mapped(held_row, info["pid"], info["backends"]))
        assert isinstance(found, dict)
        assert {(found[b].pid, found[b].tid) for b in info["backends"]} == {(info["pid"], info["tid"])}
    finally:
        proc.kill()
        proc.wait(10)


# A Postgres of its own listening on a Unix socket directory (the shared one listens on TCP only).

@pytest.fixture(scope="module")
def unix_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    sockets = Path(tempfile.mkdtemp(prefix="contend-sock-"))
    sockets.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(sockets, postgres.UNPRIVILEGED_USER)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(postgres.SERVER_SETTINGS, "unix_socket_directories", str(sockets))
        server = postgres.EmbeddedPostgres(tmp_path_factory.mktemp("unix-pg"))
        with server:
            yield f"postgresql://postgres@/{server.database}?host={sockets}&port={server.port}"
    shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture()
def held_unix_row(unix_dsn: str) -> Iterator[str]:
    with row_held(unix_dsn) as dsn:
        yield dsn


@pytest.mark.integration
@pytest.mark.parametrize("connect", [psycopg3, psycopg2_], ids=["psycopg3", "psycopg2"])
def test_unix_socket_connection_is_mapped_through_its_peer(held_unix_row: str, connect: Any) -> None:
    with waiting(held_unix_row, connect) as waiter:
        found = wait_for(lambda: mapped(held_unix_row, os.getpid(), [waiter.backend_pid]))
        assert isinstance(found, dict)
        wait_ = found[waiter.backend_pid]
        assert wait_.tid == waiter.native_id
        assert wait_.ports == () and wait_.backend_pids == (waiter.backend_pid,)
        # The peer looked for among the given servers only: the backend itself, or none.
        waits, _ = socket_waits([os.getpid()], servers=[waiter.backend_pid])
        assert [w.backend_pids for w in waits if w.tid == waiter.native_id] == [(waiter.backend_pid,)]
        waits, _ = socket_waits([os.getpid()], servers=[])
        (unknown,) = [w for w in waits if w.tid == waiter.native_id]
        assert unknown.backend_pids == () and unknown.unresolved[0].endswith(
            "unix socket, peer unknown (no Postgres process holds its peer)")
        assert backends_by_socket(waits, backends(held_unix_row)) == {}
