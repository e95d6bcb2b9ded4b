"""The cross-layer wait-for graph and its findings, on real threads, a real Postgres and real py-spy.

The server is ``tests/waitgraph_helper.py``, a small threaded process whose connections name their
thread in ``application_name`` as the reference server's do.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from rich.console import Console

from contend.diagnosis import findings, waitgraph
from contend.diagnosis.clients import Client
from contend.diagnosis.sources import Sources, parse_lock_sites
from contend.report.waitpicture import finding_picture
from contend.sample import crosslayer, pyspy
from contend.sample.attribution import resolve_client
from contend.sample.pg import PgSampler, connect, session_timeouts
from contend.sample.watch import StackWatch
from contend.sample.watchview import render
from contend.stack import Stack
from tests.conftest import CONTEND, helper_processes, wait_for

HELPER = Path(__file__).with_name("waitgraph_helper.py")


@pytest.fixture(scope="module")
def wg_dsn(stack: Stack) -> str:
    """A database of its own: the helpers' backends must not show in other tests' counts."""
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE waitgraph_tests")
    return stack.dsn.rsplit("/", 1)[0] + "/waitgraph_tests"


@pytest.fixture()
def server(wg_dsn: str, tmp_path: Path) -> Iterator[Callable[[str], dict[str, Any]]]:
    """Start the helper in a mode; return its info (pid, threads); always killed (rolling back)."""
    with helper_processes(wg_dsn, HELPER, tmp_path) as start:
        yield start


def snapshot(dsn: str, pid: int, with_locals: bool = True) -> waitgraph.Graph:
    """Dump the helper with py-spy and read Postgres once; return the graph of that moment."""
    threads = pyspy.dump(pid, with_locals=with_locals)
    conn = connect(dsn)
    try:
        tick, backends = PgSampler(conn).tick()
    finally:
        conn.close()
    clients = {int(b["pid"]): resolve_client(b) for b in backends}
    return waitgraph.build(tick["t"], [{"pid": pid, "threads": threads}], backends, clients)


def found(dsn: str, pid: int, kind: str, with_locals: bool = True, timeout: float = 30.0) -> dict[str, Any]:
    """Poll until a finding of ``kind`` shows (a thread reaches its wait a moment after starting)."""
    result: dict[str, Any] = {}

    def look() -> bool:
        graph = snapshot(dsn, pid, with_locals)
        result["graph"] = graph
        result["findings"] = findings.of_graph(graph, session_timeouts(dsn))
        return any(f["kind"] == kind for f in result["findings"])

    wait_for(look, timeout=timeout, interval=0.3)
    return result


@pytest.mark.slow
def test_a_two_thread_cross_layer_deadlock_is_found_with_both_threads(server, wg_dsn: str) -> None:
    info = server("deadlock")
    result = found(wg_dsn, info["pid"], "cross_layer_deadlock")
    deadlock = next(f for f in result["findings"] if f["kind"] == "cross_layer_deadlock")
    threads = {t["tid"]: t for t in deadlock["threads"]}
    for name, function, path in (("row-first", "row_first", "row_first"),
                                 ("lock-first", "update_row", "lock_first -> update_row")):
        expected = info["threads"][name]
        thread = threads[expected["tid"]]
        assert thread["pid"] == info["pid"]
        assert thread["backend_pid"] == expected["backend_pid"]
        assert thread["function"] == function and thread["path"].endswith(path)
        assert thread["file"].endswith("waitgraph_helper.py") and thread["line"] > 0
    layers = sorted(e["layer"] for e in deadlock["edges"])
    assert layers == ["db", "python"]
    assert "Cross-layer deadlock of 2 threads" in deadlock["text"]
    # The test database sets no timeout; the sentence says none is known, never that none is set (the
    # application may set its own on its sessions, which no other session can read).
    assert "no known timeout would end it" in deadlock["text"]
    assert "not visible to another session (declare it: app_timeouts" in deadlock["text"]
    assert "LOCK" in deadlock["text"]
    assert findings.gauges(result["graph"])["idle_in_tx_blocked_in_app"] == 1
    # The short words: what each thread holds and waits for, by function, and that nothing ends it.
    first, second = (f"`{threads[info['threads'][name]['tid']]['function']}`"
                     for name in ("row-first", "lock-first"))
    lock, row = "`LOCK` (waitgraph_helper.py)", "a row of wg_rows"
    end = " No known timeout ends it (the server's defaults set none; your app may set its own)."
    assert deadlock["short"] in (
        f"{first} holds {row} and waits for {lock}; {second} holds that lock and waits for the row.{end}",
        f"{second} holds {lock} and waits for {row}; {first} holds that row and waits for the lock.{end}")
    assert deadlock["ends"] is None
    assert {t["role"] for t in deadlock["threads"]} == {"web"}
    assert all(t["xact_age_s"] is not None and t["waits_for"] for t in deadlock["threads"])
    svg = finding_picture(deadlock)
    assert svg is not None and "row_first" in svg and "update_row" in svg
    assert "No known Postgres timeout" in svg


@pytest.mark.slow
def test_a2_watch_shows_the_deadlock_seen_so_far_and_the_python_wait_in_the_tree(server, wg_dsn: str) -> None:
    info = server("deadlock")
    found(wg_dsn, info["pid"], "cross_layer_deadlock")
    warnings: list[str] = []
    stacks = StackWatch(wg_dsn, [info["pid"]], warnings.append)
    conn = connect(wg_dsn)
    try:
        sampler = PgSampler(conn)
        latest: dict[str, Any] = {}

        def seen_twice() -> bool:
            latest["tick"], latest["backends"] = sampler.tick()
            stacks.update(latest["tick"], latest["backends"])
            return any(f.seen >= 2 for f in stacks.seen.values() if f.kind == "cross_layer_deadlock")

        wait_for(seen_twice, timeout=30, interval=0.2)
    finally:
        stacks.close()
        conn.close()
    console = Console(file=io.StringIO(), width=250, color_system=None)
    console.print(render(latest["tick"], latest["backends"], findings=stacks.findings, graph=stacks.graph))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    deadlock = next(f for f in stacks.seen.values() if f.kind == "cross_layer_deadlock")
    assert f"cross-layer deadlock: row_first <-> update_row, seen {deadlock.seen}x: `row_first` holds" in text
    # The forest: the row waiter's Postgres wait, and under the row holder its thread's Python wait.
    row_first = info["threads"]["row-first"]
    lines = text.splitlines()
    holder = next(i for i, line in enumerate(lines) if f"pid {row_first['backend_pid']} " in line)
    python = next(i for i, line in enumerate(lines) if "python: `row_first`" in line)
    assert holder < python and "waits for `LOCK` (waitgraph_helper.py), held by `update_row`" in lines[python]
    assert not warnings


@pytest.mark.slow
def test_b_convoy_behind_a_logging_handler_lock_is_found_with_its_holder(server, wg_dsn: str) -> None:
    info = server("convoy")
    emitter = info["threads"]["emitter"]
    posters = {info["threads"][f"poster-{i}"]["tid"] for i in range(4)}

    def four_waiting(with_locals: bool) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def look() -> bool:
            result.update(found(wg_dsn, info["pid"], "python_lock_convoy", with_locals))
            convoy = [f for f in result["findings"] if f["kind"] == "python_lock_convoy"]
            return bool(convoy) and convoy[0]["waiters"] == 4

        wait_for(look, timeout=30, interval=0.1)
        return result

    result = four_waiting(with_locals=True)
    convoy = next(f for f in result["findings"] if f["kind"] == "python_lock_convoy")
    assert convoy["holder"]["tid"] == emitter["tid"]
    assert convoy["holder"]["backend_pid"] == emitter["backend_pid"]
    assert {t["tid"] for t in convoy["threads"][1:]} == posters
    assert all(t["function"] == "save_results" for t in convoy["threads"][1:])
    assert "4 threads with open transactions" in convoy["text"]
    assert "the lock of logging handler JobLogHandler" in convoy["text"]
    # what the holder waits on: the row lock the helper's main thread holds
    assert f"backend {emitter['backend_pid']}, which waits for a lock held by backend" in convoy["text"]
    edges = [e for e in result["graph"].edges if e.kind == "handler lock"]
    assert {e.inferred for e in edges} == {"object identity from locals"}
    assert findings.gauges(result["graph"])["python_lock_waiters"] == 4

    # Without locals, the lock is named by its expression; the one thread holding one is the holder.
    plain = four_waiting(with_locals=False)
    convoy = next(f for f in plain["findings"] if f["kind"] == "python_lock_convoy")
    assert convoy["holder"]["tid"] == emitter["tid"]
    assert "a logging handler's lock" in convoy["text"]
    assert {e.inferred for e in plain["graph"].edges if e.kind == "handler lock"} == {
        "the only thread holding this expression"}


@pytest.mark.slow
def test_c_plain_row_lock_queues_give_no_python_finding(server, wg_dsn: str) -> None:
    info = server("rows")
    result: dict[str, Any] = {}

    def queued() -> bool:
        result["graph"] = graph = snapshot(wg_dsn, info["pid"])
        return sum(1 for e in graph.edges if e.layer == "db") >= 3

    wait_for(queued, timeout=30, interval=0.3)
    graph = result["graph"]
    assert [e for e in graph.edges if e.layer == "python"] == []
    assert findings.of_graph(graph, session_timeouts(wg_dsn)) == []
    assert findings.gauges(graph) == {"python_lock_waiters": 0, "idle_in_tx_blocked_in_app": 0}


def test_lock_sites_of_with_blocks_and_acquire_spans() -> None:
    sites = parse_lock_sites(
        "import threading\n"            # 1
        "LOCK = threading.Lock()\n"     # 2
        "def f(self):\n"                # 3
        "    with self._lock, open('x'):\n"  # 4
        "        a = 1\n"               # 5
        "    with transaction.atomic():\n"   # 6
        "        b = 2\n"               # 7
        "    LOCK.acquire()\n"          # 8
        "    try:\n"                    # 9
        "        c = 3\n"               # 10
        "    finally:\n"                # 11
        "        LOCK.release()\n"      # 12
        "    d = 4\n"                   # 13
    )
    assert sites.waits == {4: ("self._lock",), 8: ("LOCK",)}
    assert sites.holds[5] == ("self._lock",)
    assert 7 not in sites.holds  # a call is never read as a lock
    assert [line for line, held in sites.holds.items() if "LOCK" in held] == [9, 10, 11, 12]
    assert 13 not in sites.holds


def test_aggregate_counts_samples_and_episodes() -> None:
    seen = {"kind": "cross_layer_deadlock", "key": "1:2|1:3", "threads": [{"pid": 1}] * 2, "text": "x"}
    records = [{"t": 1.0, "findings": [seen]}, {"t": 2.0, "findings": [seen]}, {"t": 3.0, "findings": []},
               {"t": 4.0, "findings": [seen]}]
    (merged,) = findings.aggregate(records)
    seen_at = (merged["samples"], merged["episodes"], merged["first_seen"], merged["last_seen"])
    assert seen_at == (3, 2, 1.0, 4.0)


def test_aggregate_keeps_the_worst_moment_whose_threads_are_best_known() -> None:
    """log-persist: the idle-in-transaction root blocks one backend at every moment, the web thread
    that holds the job log handler's lock, or after a statement timeout a result worker's that queued
    first on the row, whose process that round did not dump (no function: its stack is not known)."""
    def idle(t: float, waiter: dict[str, Any], blocks: int = 1) -> dict[str, Any]:
        root = {"key": "backend:11", "function": None}
        return {"t": t, "findings": [{"kind": "idle_in_tx_waiting_on_app", "key": "backend:11|None",
                                      "blocks": blocks, "threads": [root, waiter], "text": f"at {t}"}]}

    web = {"key": "7:21", "function": "_cachalot"}
    worker = {"key": "backend:31", "function": None}
    (merged,) = findings.aggregate([idle(1.0, web), idle(2.0, web), idle(3.0, worker)])
    assert [t["function"] for t in merged["threads"]] == [None, "_cachalot"] and merged["t_worst"] == 2.0
    assert (merged["samples"], merged["last_seen"], merged["size_max"]) == (3, 3.0, 1)
    # a worse moment wins however little is known of its threads
    (merged,) = findings.aggregate([idle(1.0, web), idle(3.0, worker, blocks=2), idle(4.0, web)])
    assert merged["t_worst"] == 3.0 and merged["size_max"] == 2


@pytest.mark.slow
def test_crosslayer_takes_locals_when_the_forest_shows_a_reason_and_records_their_cost(
        server, wg_dsn: str) -> None:
    info = server("deadlock")
    written: list[dict[str, Any]] = []
    cross = crosslayer.CrossLayer([info["pid"]], session_timeouts(wg_dsn), written.extend,
                                  waiter_age_s=0.5, locals_interval_s=3600)
    conn = connect(wg_dsn)
    try:
        sampler = PgSampler(conn)

        def due() -> str | None:
            cross.observe(*sampler.tick())
            return cross.locals_due()

        reason = wait_for(due, timeout=30)
    finally:
        conn.close()
    assert reason == "root blocker idle in transaction for 0.5 s or more"
    cross.take_locals(str(reason))
    assert cross.locals_due() is None  # rate-limited
    (record,) = written
    assert record["locals"] is True and record["locals_dumps"] == 1 and record["locals_failed"] == 0
    assert 0 < record["locals_cpu_s"] < 5
    assert [f["kind"] for f in record["findings"]] == ["cross_layer_deadlock", "idle_in_tx_waiting_on_app"]
    assert record["gauges"] == {"python_lock_waiters": 1, "idle_in_tx_blocked_in_app": 1}


@pytest.mark.slow
def test_watch_json_lines_carry_the_findings_of_the_processes_it_reads(server, wg_dsn: str) -> None:
    info = server("convoy")
    env = {**os.environ, "CONTEND_DSN": wg_dsn}
    proc = subprocess.Popen([*CONTEND, "watch", "--json", "--interval", "0.3", "--pyspy-pattern",
                             r"waitgraph_helper\.py convoy"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        seen: list[dict[str, Any]] = []

        def convoy() -> dict[str, Any] | None:
            line = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
            seen.append(line)
            return next((f for f in line["findings"] if f["kind"] == "python_lock_convoy"), None)

        found = wait_for(convoy, timeout=60, interval=0)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert all("findings" in line for line in seen)
    assert set(found) == {"kind", "key", "threads", "text", "proof", "candidates", "holder", "waiters"}
    assert found["key"]  # the finding's identity, to count it over snapshots
    assert found["waiters"] == 4 and found["holder"]["tid"] == info["threads"]["emitter"]["tid"]
    assert found["proof"] == "proven" and found["candidates"] == []
    assert {t["pid"] for t in found["threads"]} == {info["pid"]}
    assert set(found["threads"][0]) == {"pid", "tid", "function", "file", "line", "backend_pid", "mapped_by",
                                        "comment"}
    assert found["threads"][0]["mapped_by"] == "application_name"
    assert seen[-1]["mapping"]["application_name"] == 6
    assert found["threads"][0]["tid"] == info["threads"]["emitter"]["tid"]


def test_watch_view_shows_findings_and_says_when_there_are_none() -> None:
    tick = {"t": 0.0, "backends": 2, "blocked": 1, "edges": 1, "depth": 1, "roots": [], "idle_in_tx": 1,
            "idle_in_tx_max_age": 2.0, "cost_ms": 1.0, "blocking_calls": 1, "locked_relations": []}
    finding = {"kind": "python_lock_convoy", "threads": [], "text": "4 threads with open transactions wait"}

    def shown(findings: list[dict[str, Any]] | None) -> str:
        console = Console(file=io.StringIO(), width=200)
        console.print(render(tick, [], findings=findings))
        return console.file.getvalue()  # type: ignore[attr-defined]

    assert "1. 4 threads with open transactions wait" in shown([finding])
    assert "findings: none" in shown([])
    assert "findings" not in shown(None)  # no py-spy target: nothing to say about Python waits
    mapping = {"text": "3 backends of the dumped processes: 0 by application_name, 1 by socket, 1 by "
                       "elimination, 1 not mapped",
               "open": ["backend 7 waits for a lock held by backend 8 of pid 9, whose thread is not "
                        "known: ..."],
               "problems": ["pid 9: permission denied reading /proc/9/mem: run as root"]}
    console = Console(file=io.StringIO(), width=300)
    console.print(render(tick, [], findings=[], mapping=mapping))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "findings: none" in text and f"mapping: {mapping['text']}" in text
    assert "open: backend 7 waits for a lock held by backend 8 of pid 9" in text
    assert "socket evidence: pid 9: permission denied" in text
    inferred = {"kind": "cross_layer_deadlock", "text": "Cross-layer deadlock", "proof": "inferred",
                "threads": [{"backend_pid": 5, "mapped_by": "socket",
                             "comment": {"controller": "JobViewSet"}}],
                "candidates": [{"backend_pid": 6, "candidates": [{"tid": 11}, {"tid": 12}]}]}
    assert "inferred: backend 6 is held by one of threads 11, 12" in shown([inferred])
    assert "backend 5: mapped by socket; controller=JobViewSet" in shown([inferred])
    backend = {"pid": 5, "state": "idle in transaction", "xact_age": 3.0, "state_age": 3.0, "app": "",
               "query": "UPDATE t",
               "comment": None, "blocked_by": [], "wait_event_type": None, "wait_event": None}
    roots = {**tick, "roots": [{"pid": 5, "blocks": 1}]}
    console = Console(file=io.StringIO(), width=300)
    console.print(render(roots, [backend], findings=[], threads={5: {
        "pid": 7, "tid": 12, "function": "save", "mapped_by": "socket", "candidates": []}}))
    assert "thread 12 of pid 7 in `save` (socket)" in console.file.getvalue()  # type: ignore[attr-defined]


SERVER_SOURCE = (
    "def row_first(conn):\n"       # 1
    "    update(conn)\n"            # 2
    "    with LOCK:\n"              # 3
    "        update(conn)\n"        # 4
    "def lock_first(conn):\n"      # 5
    "    with LOCK:\n"              # 6
    "        update(conn)\n"        # 7
)


def deadlock_moment(timeouts: dict[str, float]) -> list[dict[str, Any]]:
    """The findings of a hand-made moment: thread 11 at `with LOCK:` (line 3), thread 12 inside it."""
    psycopg_frame = {"name": "wait", "filename": "/lib/python3/site-packages/psycopg/waiting.py", "line": 1}
    threads = [
        {"thread_id": 1, "os_thread_id": 11, "active": False,
         "frames": [{"name": "row_first", "filename": "/srv/app.py", "line": 3}]},
        {"thread_id": 2, "os_thread_id": 12, "active": False,
         "frames": [psycopg_frame, {"name": "lock_first", "filename": "/srv/app.py", "line": 7}]},
    ]
    backends = [
        {"pid": 101, "state": "idle in transaction", "xact_age": 5.0, "blocked_by": []},
        {"pid": 102, "state": "active", "xact_age": 4.0, "wait_event_type": "Lock", "blocked_by": [101]},
    ]
    clients = {101: Client(pid=7, native_thread_id=11), 102: Client(pid=7, native_thread_id=12)}
    sources = Sources(read=lambda filename: SERVER_SOURCE)
    graph = waitgraph.build(1.0, [{"pid": 7, "threads": threads}], backends, clients, sources)
    return findings.of_graph(graph, timeouts)


def test_the_timeout_that_ends_a_cross_layer_deadlock_is_the_smallest_that_applies() -> None:
    none = deadlock_moment({"lock_timeout": 0, "statement_timeout": 0})
    assert [f["kind"] for f in none] == ["cross_layer_deadlock", "idle_in_tx_waiting_on_app"]
    assert ("no known timeout would end it (the server's defaults for a new session: lock_timeout = 0, "
            "statement_timeout = 0)") in none[0]["text"]
    # backend 102 waits on a lock: statement_timeout cancels it; 101 is idle: its timeout ends the session
    idle = "idle_in_transaction_session_timeout"
    text = deadlock_moment({"statement_timeout": 30000, idle: 60000})[0]["text"]
    assert text.endswith("statement_timeout (30 s) cancels backend 102 and ends it.")
    text = deadlock_moment({"statement_timeout": 30000, idle: 5000})[0]["text"]
    assert text.endswith("idle_in_transaction_session_timeout (5 s) terminates the session of backend 101 "
                         "and ends it.")


def test_a_thread_of_a_process_not_dumped_says_why() -> None:
    # Backend 102's client (pid 8, named by application_name) was not dumped at this moment: the words
    # say whether pid 8 is watched at all, and how to watch it.
    threads = [{"thread_id": 1, "os_thread_id": 11, "active": False,
                "frames": [{"name": "row_first", "filename": "/srv/app.py", "line": 3}]}]
    backends = [
        {"pid": 101, "state": "idle in transaction", "xact_age": 5.0, "blocked_by": []},
        {"pid": 102, "state": "active", "xact_age": 4.0, "wait_event_type": "Lock", "blocked_by": [101]},
    ]
    clients = {101: Client(pid=7, native_thread_id=11), 102: Client(pid=8, native_thread_id=21)}
    sources = Sources(read=lambda filename: SERVER_SOURCE)

    def words(targets: list[int]) -> str:
        graph = waitgraph.build(1.0, [{"pid": 7, "threads": threads}], backends, clients, sources,
                                targets=targets)
        return waitgraph.describe(graph, "8:21")

    assert words([7, 8]) == ("thread 21 of pid 8 (its process is a py-spy target, not dumped in this round), "
                             "backend 102")
    assert "not a py-spy target: add it with --pyspy-pid" in words([7])
