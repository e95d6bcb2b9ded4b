"""Mapping backends to threads without application_name: evidence, candidates, proof (hand-made dumps)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from contend.diagnosis import findings, mapping, sqlcomment, waitgraph
from contend.diagnosis.clients import Client
from contend.diagnosis.sources import Sources, parse_lock_sites

SOURCE = (
    "def view(conn):\n"                  # 1
    "    with transaction.atomic():\n"   # 2
    "        update(conn)\n"             # 3
    "        with LOCK:\n"               # 4
    "            update(conn)\n"         # 5
    "def other(conn):\n"                 # 6
    "    with transaction.atomic():\n"   # 7
    "        with OTHER:\n"              # 8
    "            pass\n"                 # 9
    "def idle():\n"                      # 10
    "    wait()\n"                       # 11
)
PSYCOPG = {"name": "wait", "filename": "/lib/python3/site-packages/psycopg/waiting.py", "line": 1}


def thread(tid: int, function: str, line: int, *inner: dict[str, Any],
           active: bool = False) -> dict[str, Any]:
    return {"thread_id": tid * 100, "os_thread_id": tid, "active": active,
            "frames": [*inner, {"name": function, "filename": "/srv/app.py", "line": line}]}


HOLDER = thread(21, "view", 5, PSYCOPG)   # holds LOCK, waits on Postgres
WAITER_1 = thread(22, "view", 4)          # waits for LOCK, inside atomic
WAITER_2 = thread(23, "view", 4)
IDLE = thread(25, "idle", 11)             # no transaction: never a candidate


def moment(threads: list[dict[str, Any]], idle_backends: int = 2) -> waitgraph.Graph:
    """Backend 201 (the holder's, found by its socket) waits for 202; 202.. are idle in transaction."""
    backends = [{"pid": 201, "state": "active", "xact_age": 3.0, "wait_event_type": "Lock",
                 "blocked_by": [202]}]
    backends += [{"pid": 202 + i, "state": "idle in transaction", "xact_age": 9.0 - i, "blocked_by": [],
                  "comment": {"controller": "JobViewSet"}} for i in range(idle_backends)]
    clients = {int(b["pid"]): Client(pid=7, via="socket") for b in backends}
    sockets = {201: SimpleNamespace(pid=7, tid=21)}
    sources = Sources(read=lambda filename: SOURCE)
    return waitgraph.build(1.0, [{"pid": 7, "threads": threads}], backends, clients, sources, sockets)


def deadlock(graph: waitgraph.Graph) -> dict[str, Any]:
    return next(f for f in findings.of_graph(graph) if f["kind"] == "cross_layer_deadlock")


def test_a_thread_mapped_by_elimination_is_labelled_so_and_its_deadlock_is_proven() -> None:
    graph = moment([HOLDER, WAITER_1, IDLE], idle_backends=1)
    assert graph.holders[201].evidence == "socket" and graph.holders[201].candidates == ("7:21",)
    assert graph.holders[202].evidence == "elimination" and graph.holders[202].candidates == ("7:22",)
    found = deadlock(graph)
    assert found["proof"] == "proven" and found["candidates"] == []
    by_tid = {t["tid"]: t for t in found["threads"]}
    assert by_tid[22]["mapped_by"] == "elimination" and by_tid[22]["backend_pid"] == 202
    assert by_tid[21]["mapped_by"] == "socket" and by_tid[21]["backend_pid"] == 201
    assert by_tid[22]["comment"] == {"controller": "JobViewSet"}
    summary = graph.record()["mapping"]
    assert summary["text"] == ("2 backends of the dumped processes: 0 by application_name, 1 by socket, "
                               "1 by elimination, 0 not mapped")
    assert summary["open"] == []


def test_a_cycle_through_candidates_that_all_lead_to_one_thread_is_proven() -> None:
    graph = moment([HOLDER, WAITER_1, WAITER_2, IDLE])
    assert graph.holders[202].candidates == ("7:22", "7:23")
    found = deadlock(graph)
    assert found["proof"] == "proven"
    (through,) = found["candidates"]
    assert through["backend_pid"] == 202 and {c["tid"] for c in through["candidates"]} == {22, 23}
    assert "its thread is one of 2 candidates" in found["text"]
    # the two candidate threads wait for the handler's lock: one convoy of two, not four
    convoy = next(f for f in findings.of_graph(graph) if f["kind"] == "python_lock_convoy")
    assert convoy["waiters"] == 2 and convoy["holder"]["tid"] == 21
    assert graph.record()["mapping"]["candidates"] == 2
    idle = next(f for f in findings.of_graph(graph) if f["kind"] == "idle_in_tx_waiting_on_app")
    assert idle["short"].startswith("backend 202 of one of 2 threads, idle in transaction 9.0 s, blocks 1")


def test_a_cycle_through_candidates_that_lead_to_different_threads_is_inferred() -> None:
    elsewhere = thread(23, "other", 8)       # waits for OTHER
    other_holder = thread(24, "other", 9)    # holds OTHER
    graph = moment([HOLDER, WAITER_1, elsewhere, other_holder, IDLE])
    assert graph.holders[202].candidates == ("7:22", "7:23", "7:24")
    found = deadlock(graph)
    assert found["proof"] == "inferred"
    assert {c["tid"] for c in found["candidates"][0]["candidates"]} == {22, 23, 24}
    inferred = [e for e in graph.edges if e.proof == "inferred" and e.waiter == "backend:202"]
    assert {e.holder for e in inferred} == {"7:21", "7:24"}


def test_a_wait_left_open_for_lack_of_a_thread_says_why_and_what_would_close_it() -> None:
    graph = moment([HOLDER, IDLE], idle_backends=1)  # no thread shows an open transaction
    assert not [f for f in findings.of_graph(graph) if f["kind"] == "cross_layer_deadlock"]
    summary = graph.record()["mapping"]
    assert summary["not_mapped"] == 1 and summary["socket"] == 1
    (gap,) = summary["open"]
    assert gap.startswith("backend 201 waits for a lock held by backend 202 of pid 7, whose thread is not "
                          "known: its thread is not blocked on its socket and no thread of pid 7")
    assert "py-spy" in gap and "application_name" in gap


def test_elimination_follows_the_backend_state_and_settles_one_thread_at_a_time() -> None:
    facts = [mapping.ThreadFacts("7:1", 7, True, in_driver=True, waits_in_python=False),
             mapping.ThreadFacts("7:2", 7, True, in_driver=False, waits_in_python=True),
             mapping.ThreadFacts("7:3", 7, True, in_driver=False, waits_in_python=False)]
    backends = [{"pid": 1, "state": "active", "xact_age": 1.0},            # not the Python waiter
                {"pid": 2, "state": "idle in transaction", "xact_age": 1.0},  # not in a driver call
                {"pid": 3, "state": "idle", "xact_age": None}]             # no transaction: not mapped
    clients = {b["pid"]: Client(pid=7, via="socket") for b in backends}
    holders = mapping.map_backends(backends, clients, {}, facts)
    assert holders[1].candidates == ("7:1", "7:3") and holders[2].candidates == ("7:2", "7:3")
    assert holders[3].candidates == () and holders[3].why == "it is not in a transaction"
    one = [{"pid": 1, "state": "active", "xact_age": 1.0}, {"pid": 2, "state": "idle in transaction",
                                                             "xact_age": 1.0}]
    holders = mapping.map_backends(one, clients, {}, facts[:2])
    assert (holders[1].candidates, holders[2].candidates) == (("7:1",), ("7:2",))


def test_application_name_comes_first_and_a_process_not_dumped_is_named_as_such() -> None:
    backends = [{"pid": 1, "xact_age": 1.0}, {"pid": 2, "xact_age": 1.0}, {"pid": 3, "xact_age": 1.0}]
    clients = {1: Client(pid=7, native_thread_id=5), 2: Client(pid=8, via="socket"), 3: None}
    holders = mapping.map_backends(backends, clients, {2: SimpleNamespace(pid=8, tid=9)}, [
        mapping.ThreadFacts("7:5", 7, True, False, False)])
    assert holders[1].evidence == "application_name"
    assert holders[2].why == "its process (pid 8) was not dumped"
    assert "add pid 8" in mapping.gap(holders[2], 1)
    assert 3 not in holders


def test_atomic_blocks_and_decorated_functions_are_transactions() -> None:
    sites = parse_lock_sites("@transaction.atomic\ndef f():\n    x = 1\n\ndef g():\n"
                             "    with atomic(using='default'):\n        y = 2\n    z = 3\n")
    assert sites.atomic == {3, 7}


def test_sqlcommenter_comments_are_parsed_with_url_decoding() -> None:
    query = ("UPDATE jobs_job SET logs = '...' WHERE id = 4 /*controller='JobViewSet',"
             "route='api%2Fv2%2Fjobs%2F%3Cpk%3E%2Fresult%2F',callsite='ami%2Fjobs%2Fviews.py%3A42',"
             "traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01'*/")
    comment = sqlcomment.parse(query)
    assert comment == {"controller": "JobViewSet", "route": "api/v2/jobs/<pk>/result/",
                       "callsite": "ami/jobs/views.py:42",
                       "traceparent": "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01"}
    assert sqlcomment.words(comment) == ("controller=JobViewSet route=api/v2/jobs/<pk>/result/ "
                                         "callsite=ami/jobs/views.py:42")
    assert sqlcomment.parse("SELECT 1 /* a plain comment */") is None
    assert sqlcomment.parse("SELECT 1 /*a='it\\'s'*/") == {"a": "it's"}
    assert sqlcomment.parse(None) is None


def test_a_thread_found_by_its_socket_keeps_its_backend_for_the_rest_of_that_transaction() -> None:
    """A thread between two statements of its transaction (off its socket) keeps its backend."""
    from contend.sample import crosslayer, sockets

    on_socket = [sockets.SocketWait(pid=7, tid=21, syscall="poll", fds=(3,), ports=(5001,),
                                    addrs=("127.0.0.1",))]
    reads = iter([(on_socket, [])])
    dumps = {7: [HOLDER, WAITER_1, IDLE]}
    cross = crosslayer.CrossLayer([7], {}, lambda records: None, dumper=lambda pid, **kw: dumps[pid],
                                  socket_reader=lambda pids: next(reads, ([], [])),
                                  resolver=lambda b: Client(pid=7, via="socket"),
                                  sources=Sources(read=lambda filename: SOURCE))

    def moment(t: float, holder_xact_age: float) -> dict[str, Any]:
        backends = [
            {"t": t, "pid": 201, "state": "active", "xact_age": holder_xact_age, "wait_event_type": "Lock",
             "blocked_by": [202], "client_addr": "127.0.0.1", "client_port": 5001},
            {"t": t, "pid": 202, "state": "idle in transaction", "xact_age": 9.0 + t, "blocked_by": []},
        ]
        cross.observe({"t": t, "roots": []}, backends)
        records, _ = cross.dump_all(with_locals=False)
        record = cross.moment(records)
        assert record is not None
        return record

    first = moment(100.0, 3.0)
    assert first["threads"]["7:21"]["mapped_by"] == "socket"
    assert first["findings"][0]["kind"] == "cross_layer_deadlock"
    later = moment(101.0, 4.0)  # same transaction (started at 97.0): still that thread
    assert later["threads"]["7:21"]["mapped_by"] == "socket"
    assert later["findings"][0]["kind"] == "cross_layer_deadlock"
    # a new transaction of backend 201: the socket mapping no longer holds; elimination finds the one
    # thread in a transaction that does not wait in Python
    other = moment(102.0, 0.5)
    assert other["threads"]["7:21"]["mapped_by"] == "elimination"


def test_a_lock_waiters_thread_between_two_polls_is_read_again() -> None:
    """psycopg 3 leaves its poll every 100 ms: a read may catch the thread off its socket."""
    from contend.sample import crosslayer, sockets

    on_socket = [sockets.SocketWait(pid=7, tid=21, syscall="poll", fds=(3,), ports=(5001,),
                                    addrs=("127.0.0.1",))]
    reads: list[int] = []

    def read(pids: Any) -> tuple[list[sockets.SocketWait], list[str]]:
        reads.append(1)
        return (on_socket if len(reads) == 3 else []), []

    cross = crosslayer.CrossLayer([7], {}, lambda records: None, dumper=lambda pid, **kw: [HOLDER, WAITER_1],
                                  socket_reader=read, resolver=lambda b: Client(pid=7, via="socket"),
                                  sources=Sources(read=lambda filename: SOURCE))
    holder = {"t": 100.0, "pid": 201, "state": "active", "xact_age": 3.0, "wait_event_type": "Lock",
              "blocked_by": [202], "client_addr": "127.0.0.1", "client_port": 5001}
    idle = {"t": 100.0, "pid": 202, "state": "idle in transaction", "xact_age": 9.0, "blocked_by": []}
    cross.observe({"t": 100.0, "roots": []}, [holder, idle])
    record = cross.moment(cross.dump_all(with_locals=False)[0])
    assert record is not None and record["threads"]["7:21"]["mapped_by"] == "socket"
    assert len(reads) == 3  # read until the waiter's thread was seen on its connection
    cross.observe({"t": 101.0, "roots": []}, [idle])  # no lock waiter: one read
    reads.clear()
    cross.dump_all(with_locals=False)
    assert len(reads) == 1


def test_each_process_of_a_round_is_joined_to_the_postgres_snapshot_nearest_its_dump() -> None:
    """A round dumps its processes one after another; a loaded machine makes it last seconds. Here the
    web process is dumped at 100.0 and a worker at 101.5, after statement_timeout has cancelled the
    row wait of the thread holding LOCK (backend 201) and the next thread (backend 203) has queued
    on the same row: the web process's stacks must be read with the snapshot of 100.0, where the
    thread blocked on its socket is the one whose backend waits for the idle-in-transaction root."""
    from contend.sample import crosslayer, sockets

    on_socket = [sockets.SocketWait(pid=7, tid=21, syscall="poll", fds=(3,), ports=(5001,),
                                    addrs=("127.0.0.1",))]
    cross = crosslayer.CrossLayer([7, 8], {}, lambda records: None,
                                  socket_reader=lambda pids: (on_socket if list(pids) == [7] else [], []),
                                  resolver=lambda b: Client(pid=7, via="socket"),
                                  sources=Sources(read=lambda filename: SOURCE))

    def row(t: float, pid: int, state: str, blocked_by: list[int], port: int) -> dict[str, Any]:
        return {"t": t, "pid": pid, "state": state, "xact_age": t - 90.0 - pid % 10, "blocked_by": blocked_by,
                "wait_event_type": "Lock" if blocked_by else "Client", "client_addr": "127.0.0.1",
                "client_port": port}

    before = [row(100.0, 201, "active", [202], 5001), row(100.0, 202, "idle in transaction", [], 5002),
              row(100.0, 203, "idle in transaction", [], 5003)]
    after = [row(101.5, 201, "idle in transaction (aborted)", [], 5001),
             row(101.5, 202, "idle in transaction", [], 5002), row(101.5, 203, "active", [202], 5003)]
    cross.observe({"t": 100.0, "roots": [{"pid": 202}]}, before)
    cross.observe({"t": 101.5, "roots": [{"pid": 202}]}, after)
    record = cross.moment([{"t": 100.0, "pid": 7, "threads": [HOLDER, WAITER_1, WAITER_2]},
                           {"t": 101.5, "pid": 8, "threads": [thread(31, "idle", 11)]}])
    assert record is not None and record["pg_t"] == 101.5
    kinds = {f["kind"]: f for f in record["findings"]}
    assert set(kinds) == {"cross_layer_deadlock", "python_lock_convoy", "idle_in_tx_waiting_on_app"}
    idle = kinds["idle_in_tx_waiting_on_app"]
    # the root's one waiter is the thread in LOCK's block, found by its socket (with the snapshot taken
    # after the round: a backend whose candidates all queue for LOCK, and no deadlock)
    assert [t["key"] for t in idle["threads"]] == ["backend:202", "7:21"]
    assert idle["threads"][1]["mapped_by"] == "socket" and idle["threads"][1]["backend_pid"] == 201


def test_a_blocker_whose_client_is_not_known_is_said_so() -> None:
    backends = [{"pid": 201, "state": "active", "xact_age": 3.0, "wait_event_type": "Lock",
                 "blocked_by": [299]},
                {"pid": 299, "state": "idle in transaction", "xact_age": 9.0, "blocked_by": []}]
    clients = {201: Client(pid=7, via="socket"), 299: None}  # 299: a Unix socket, or another host
    graph = waitgraph.build(1.0, [{"pid": 7, "threads": [HOLDER]}], backends, clients,
                            Sources(read=lambda filename: SOURCE),
                            {201: SimpleNamespace(pid=7, tid=21)})
    (gap,) = graph.record()["mapping"]["open"]
    assert gap.startswith("backend 201 waits for a lock held by backend 299, whose thread is not known: its "
                          "client process is not known")
    assert "run contend on the client's host" in gap


def test_a_view_made_atomic_by_atomic_requests_under_asgi_is_inside_a_transaction() -> None:
    # Antenna under gunicorn + uvicorn: Django runs the sync view in a thread through asgiref, and
    # ATOMIC_REQUESTS wraps it in atomic's ContextDecorator, so the wrapper's caller is asgiref's.
    from contend.diagnosis.waitgraph import ThreadNode, thread_facts

    site = "/srv/venv/lib/python3.11/site-packages"
    frames = [
        {"name": "Handler.acquire", "filename": "/usr/lib/python3.11/logging/__init__.py", "line": 917},
        {"name": "JobViewSet.result", "filename": "/srv/app/ami/jobs/views.py", "line": 392},
        {"name": "APIView.dispatch", "filename": f"{site}/rest_framework/views.py", "line": 506},
        {"name": "inner", "filename": "/usr/lib/python3.11/contextlib.py", "line": 81},
        {"name": "SyncToAsync.__call__.<locals>.func.<locals>.run_child",
         "filename": f"{site}/asgiref/sync.py", "line": 490},
        {"name": "SyncToAsync.thread_handler", "filename": f"{site}/asgiref/sync.py", "line": 635},
        {"name": "_WorkItem.run", "filename": "/usr/lib/python3.11/concurrent/futures/thread.py", "line": 58},
    ]
    sources = Sources(read=lambda filename: "")
    node = ThreadNode("9:1", 9, 1, frames=frames)
    assert thread_facts(node, sources).in_transaction
    plain = ThreadNode("9:2", 9, 2, frames=[f for f in frames if f["name"] != "inner"])
    assert not thread_facts(plain, sources).in_transaction
