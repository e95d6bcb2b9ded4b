"""py-spy dumps and attribution of a root blocker to the client process and thread that holds it.

The client is a real Python process (a script written by the test): one thread holds row id=1 of
sample_hot idle in its transaction, another waits on it inside a query.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contend.diagnosis import threads as thread_states
from contend.diagnosis.clients import app_name, parse_app_name
from contend.sample import pyspy
from contend.sample.attribution import Attributor, pid_of_socket, resolve_client
from contend.sample.pg import PgSampler, connect
from tests.conftest import HOT_UPDATE, helper_processes, wait_for

CLIENT = '''
import json, os, sys, threading, time
import psycopg

dsn, mode, info_path = os.environ["SAMPLE_DSN"], sys.argv[1], sys.argv[2]
info = {"pid": os.getpid()}

def app(role):
    tid, ntid = threading.get_ident(), threading.get_native_id()
    return f"contend-ref:{role} pid={os.getpid()} tid={tid} ntid={ntid}"

def hold_lock_in_test(locked):
    kwargs = {"application_name": app("web")} if mode == "app" else {}
    conn = psycopg.connect(dsn, **kwargs)
    conn.execute("UPDATE sample_hot SET n = n + 1 WHERE id = 1")
    info.update(holder_tid=threading.get_ident(), holder_ntid=threading.get_native_id(),
                holder_backend=conn.info.backend_pid)
    locked()
    time.sleep(600)  # holds the row until the test kills this process

def wait_for_row_in_test(connected):
    conn = psycopg.connect(dsn, autocommit=True, application_name=app("worker-0"))
    info.update(waiter_backend=conn.info.backend_pid)
    connected.set()
    conn.execute("UPDATE sample_hot SET n = n + 1 WHERE id = 1")

def report():
    open(info_path + ".tmp", "w").write(json.dumps(info))
    os.rename(info_path + ".tmp", info_path)

if mode == "socket":
    hold_lock_in_test(report)
else:
    locked, connected = threading.Event(), threading.Event()
    threading.Thread(target=hold_lock_in_test, args=(locked.set,), name="holder", daemon=True).start()
    locked.wait(30)
    threading.Thread(target=wait_for_row_in_test, args=(connected,), name="waiter", daemon=True).start()
    connected.wait(30)
    with psycopg.connect(dsn, autocommit=True) as watcher:  # until the waiter really waits on the row
        sql = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s"
        while watcher.execute(sql, [info["waiter_backend"]]).fetchone()[0] != "Lock":
            time.sleep(0.01)
    report()
    time.sleep(600)
'''


@pytest.fixture()
def client(sample_dsn: str, tmp_path: Path) -> Iterator[Callable[[str], dict[str, Any]]]:
    """Start the client script in a mode; return its info (pids, thread ids, its script); always stopped."""
    with psycopg.connect(sample_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS sample_hot (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("INSERT INTO sample_hot VALUES (1, 0) ON CONFLICT DO NOTHING")
    script = tmp_path / "client_under_test.py"
    script.write_text(CLIENT)
    with helper_processes(sample_dsn, script, tmp_path) as start:
        yield lambda mode: {**start(mode), "script": str(script)}


def test_application_name_round_trip() -> None:
    client = parse_app_name(app_name("worker-3", 4711, 140001, 4712))
    assert client is not None
    assert (client.role, client.pid) == ("worker-3", 4711)
    assert (client.thread_id, client.native_thread_id) == (140001, 4712)
    assert parse_app_name("psql") is None and parse_app_name(None) is None


@pytest.mark.integration
def test_pyspy_dump_of_a_process_blocked_in_a_query(client) -> None:
    info = client("app")
    threads = pyspy.dump(info["pid"])
    waiter = next(t for t in threads if t["name"] == "waiter")
    names = [f["name"] for f in waiter["frames"]]
    assert "wait_for_row_in_test" in names
    assert thread_states.thread_state(waiter, [info["script"]]) == "psycopg wait"
    holder = next(t for t in threads if t["name"] == "holder")
    assert holder["os_thread_id"] == info["holder_ntid"] and holder["thread_id"] == info["holder_tid"]
    record = pyspy.dump_record(1.0, info["pid"], "worker", threads)
    sentences = thread_states.summarize_stacks([record], [info["script"]])
    # Three threads run the script's code: main (sleeping), holder (sleeping), waiter (in psycopg).
    assert "1 of 3 result workers in psycopg wait <- wait_for_row_in_test" in sentences
    assert "1 of 3 result workers in idle <- hold_lock_in_test" in sentences


@pytest.mark.integration
def test_root_blocker_attributed_to_thread_from_application_name(client, sample_dsn: str) -> None:
    info = client("app")
    with connect(sample_dsn) as conn:
        tick, backends = PgSampler(conn).tick()
    assert [(r["pid"], r["blocks"]) for r in tick["roots"]] == [(info["holder_backend"], 1)]
    attributor = Attributor(threshold_s=0.0, dumper=pyspy.dump)
    by_pid = {b["pid"]: b for b in backends}
    ((root, root_for),) = attributor.due(tick)
    record = attributor.attribute(tick["t"], root, root_for, by_pid[root["pid"]])
    assert record["client_pid"] == info["pid"]
    assert record["thread_id"] == info["holder_tid"]
    assert record["role"] == "web"
    assert record["state"] == "idle in transaction" and record["blocks"] == 1
    assert "hold_lock_in_test" in [f["name"] for f in record["stack"]]
    assert thread_states.own_chain(record["stack"], [info["script"]]) == "hold_lock_in_test"
    # Once attributed, the same root episode is not attributed again.
    assert attributor.due({**tick, "t": tick["t"] + 5}) == []


@pytest.mark.integration
def test_root_blocker_attributed_through_the_socket_table(client, sample_dsn: str) -> None:
    info = client("socket")
    waiter = psycopg.connect(sample_dsn, autocommit=True)
    thread = threading.Thread(target=waiter.execute, args=(HOT_UPDATE,), daemon=True)
    thread.start()
    try:
        with connect(sample_dsn) as conn:
            sampler = PgSampler(conn)
            tick, backends = wait_for(lambda: (lambda tb: tb if tb[0]["roots"] else None)(sampler.tick()))
        holder = next(b for b in backends if b["pid"] == info["holder_backend"])
        assert holder["app"] == ""
        assert pid_of_socket(holder["client_addr"], holder["client_port"]) == info["pid"]
        resolved = resolve_client(holder)
        assert resolved is not None and resolved.via == "socket" and resolved.pid == info["pid"]
        attributor = Attributor(threshold_s=0.0, dumper=pyspy.dump)
        ((root, root_for),) = attributor.due(tick)
        record = attributor.attribute(tick["t"], root, root_for, holder)
        # The holder process has a single thread, so the thread is known too.
        assert record["client_pid"] == info["pid"]
        assert (record["thread_id"], record["role"]) == (info["holder_tid"], None)
        assert "hold_lock_in_test" in [f["name"] for f in record["stack"]]
    finally:
        with psycopg.connect(sample_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (info["holder_backend"],))
        thread.join(timeout=20)
        waiter.close()


def test_a_root_episode_ends_when_a_tick_lacks_it() -> None:
    attributor = Attributor(threshold_s=1.0)
    root = {"pid": 7, "blocks": 2}
    assert attributor.due({"t": 0.0, "roots": [root]}) == []
    assert attributor.due({"t": 0.5, "roots": [root]}) == []
    assert attributor.due({"t": 1.0, "roots": [root]}) == [(root, 1.0)]
    assert attributor.due({"t": 1.5, "roots": [root]}) == []  # attributed once per episode
    assert attributor.due({"t": 1.6, "roots": []}) == []
    assert attributor.due({"t": 2.0, "roots": [root]}) == []  # a new episode starts its clock again
    assert attributor.due({"t": 3.0, "roots": [root]}) == [(root, 1.0)]


# A server that accepts one connection and keeps it; and a client that connects from a given local
# port (SO_REUSEADDR: Linux lets connections to different servers share a local port).
ONE_CONNECTION_SERVER = """
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); print(s.getsockname()[1], flush=True)
conn, _ = s.accept(); time.sleep(120)
"""
CLIENT_FROM_PORT = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.connect(("127.0.0.1", int(sys.argv[2])))
print("connected", flush=True); time.sleep(120)
"""


@pytest.mark.integration
def test_a_local_port_shared_by_two_connections_is_told_apart_by_the_backend_it_reaches() -> None:
    procs: list[subprocess.Popen[str]] = []

    def start(script: str, *args: int) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        return proc, proc.stdout.readline().strip()

    try:
        backend, backend_port = start(ONE_CONNECTION_SERVER)
        other, other_port = start(ONE_CONNECTION_SERVER)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        ours, said = start(CLIENT_FROM_PORT, port, int(backend_port))
        theirs, said_too = start(CLIENT_FROM_PORT, port, int(other_port))
        assert (said, said_too) == ("connected", "connected")
        wait_for(lambda: pid_of_socket("127.0.0.1", port, backend.pid) is not None, timeout=10)
        assert pid_of_socket("127.0.0.1", port, backend.pid) == ours.pid
        assert pid_of_socket("127.0.0.1", port, other.pid) == theirs.pid
        assert pid_of_socket("127.0.0.1", port) is None  # two processes have that address
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
