"""The job logger on the stdlib logging machinery, statement_timeout, and the deadlock they make together.

Django runs in this test process (tests/refserver_inprocess.py) against real Postgres and NATS, with a
2 s statement_timeout, so the threads of a test share one JobLogHandler and its lock, exactly as the
request threads of one web process do.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from contend.stack import Stack
from tests.conftest import wait_for
from tests.refserver_inprocess import InProcessRefServer, inprocess_refserver

pytestmark = pytest.mark.integration  # every test here starts processes


@pytest.fixture(scope="module")
def app(stack: Stack) -> InProcessRefServer:
    return inprocess_refserver(stack)


@pytest.fixture
def observer(app: InProcessRefServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        yield conn


def _logs(observer: psycopg.Connection[Any], job_id: int) -> dict[str, list[str]]:
    row = observer.execute("SELECT logs FROM jobs_job WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    logs: dict[str, list[str]] = row[0]
    return logs


def _close_connection() -> None:
    from django.db import connections

    connections.close_all()


def _run_in_thread(target: Any) -> threading.Thread:
    def run() -> None:
        try:
            target()
        finally:
            _close_connection()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_one_handler_per_job_and_process_pointed_at_the_latest_instance(app: InProcessRefServer) -> None:
    from contend.refserver.joblog import JobLogHandler
    from contend.refserver.models import Job

    first, second = Job.objects.get(pk=app.job_id), Job.objects.get(pk=app.job_id)
    logger = first.logger
    assert second.logger is logger is logging.getLogger(f"ami.jobs.{app.job_id}")
    handlers = [h for h in logger.handlers if isinstance(h, JobLogHandler)]
    assert len(handlers) == 1 and handlers[0].job is second
    assert not logger.propagate
    # The lock Handler.handle() takes around emit() is the stdlib's own re-entrant lock.
    assert isinstance(handlers[0].lock, type(threading.RLock()))
    _close_connection()


def test_json_store_prepends_once_keeps_errors_and_caps_at_1000(app: InProcessRefServer,
                                                                observer: psycopg.Connection[Any]) -> None:
    from contend.refserver.models import Job

    full = [f"[2026-01-01 00:00:00] INFO old line {n}" for n in range(1000)]
    observer.execute("UPDATE jobs_job SET logs = %s WHERE id = %s",
                     [json.dumps({"stdout": full, "stderr": []}), app.job_id])
    stamp = "SELECT updated_at FROM jobs_job WHERE id = %s"
    updated_at = observer.execute(stamp, [app.job_id]).fetchone()
    job = Job.objects.get(pk=app.job_id)
    job.logger.error("worker lost image 7")
    job.logger.error("worker lost image 7")  # the same line within the same second is not repeated
    logs = _logs(observer, app.job_id)
    assert logs["stdout"][0].endswith("ERROR worker lost image 7")
    assert logs["stdout"][1] == full[0] and len(logs["stdout"]) == 1000
    assert logs["stderr"] == ["worker lost image 7"]
    assert observer.execute(stamp, [app.job_id]).fetchone() == updated_at  # a log write leaves it alone
    _close_connection()


def test_statement_timeout_reaches_every_connection(app: InProcessRefServer) -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SHOW statement_timeout")
        assert cur.fetchone() == (f"{int(app.statement_timeout_s)}s",)
    _close_connection()


def _waiting_backend(observer: psycopg.Connection[Any]) -> tuple[int, int, list[int]] | None:
    """Return (pid, xid, blocking pids) of the in-process app's backend that waits on a lock, if any."""
    row = observer.execute(
        "SELECT pid, backend_xid::text::bigint, pg_blocking_pids(pid) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND application_name LIKE 'contend-ref:web%'").fetchone()
    return (int(row[0]), int(row[1]), list(row[2])) if row and row[1] is not None else None


def _xact_status(observer: psycopg.Connection[Any], xid: int) -> str:
    row = observer.execute("SELECT txid_status(%s)", [xid]).fetchone()
    assert row is not None
    return str(row[0])


def test_a_cancelled_log_write_is_swallowed_the_view_answers_200_and_its_transaction_rolls_back(
        app: InProcessRefServer, observer: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture) -> None:
    from django.test import Client

    from contend.refserver.models import Token

    token = Token.objects.values_list("key", flat=True).first()
    _close_connection()
    body = {"results": [{"reply_subject": f"cancel.r{n}",
                         "result": {"error": "load-test", "image_id": f"x{n}"}} for n in range(2)]}
    before = _logs(observer, app.job_id)["stdout"]
    answer: dict[str, Any] = {}

    def post() -> None:
        started = time.monotonic()
        response = Client().post(f"/api/v2/jobs/{app.job_id}/result/", data=json.dumps(body),
                                 content_type="application/json", HTTP_AUTHORIZATION=f"Token {token}")
        answer.update(status=response.status_code, body=response.json(), took=time.monotonic() - started)

    with psycopg.connect(app.dsn) as holder, caplog.at_level(logging.INFO):
        holder.execute("SELECT id FROM jobs_job WHERE id = %s FOR UPDATE", [app.job_id])  # tx left open
        thread = _run_in_thread(post)
        waiting = wait_for(lambda: _waiting_backend(observer), timeout=20)
        assert isinstance(waiting, tuple)
        thread.join(timeout=60)
        holder.rollback()
    assert not thread.is_alive()
    # The first log UPDATE waited on the row until statement_timeout cancelled it; emit() swallowed
    # that, Django marked the request's transaction for rollback, the second line failed at once.
    assert answer["took"] >= app.statement_timeout_s * 0.9
    assert answer["status"] == 200
    assert answer["body"]["status"] == "accepted" and answer["body"]["results_queued"] == 2
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Failed to save logs")]
    assert len(failures) == 2
    assert "canceling statement due to statement timeout" in failures[0]
    assert "You can't execute queries until the end of the 'atomic' block" in failures[1]
    # ATOMIC_REQUESTS rolled the request back although the view returned normally: no line kept.
    assert _xact_status(observer, waiting[1]) == "aborted"
    assert _logs(observer, app.job_id)["stdout"] == before


def test_handler_lock_and_row_lock_deadlock_across_layers_until_statement_timeout(
        app: InProcessRefServer, observer: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture) -> None:
    """B's transaction holds the row and B waits for the handler lock; A holds the handler lock and
    waits for the row. Postgres sees one lock waiter and one idle transaction, no deadlock; only A's
    statement_timeout ends it."""
    from django.db import connection, transaction

    from contend.refserver.joblog import JobLogHandler
    from contend.refserver.models import Job

    b_holds_row, a_waits_on_row = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def thread_b() -> None:
        with transaction.atomic():
            job = Job.objects.get(pk=app.job_id)
            job.logger.info("B first line")  # B's transaction now holds the job row
            seen["b_pid"] = connection.connection.info.backend_pid
            b_holds_row.set()
            a_waits_on_row.wait(timeout=30)
            started = time.monotonic()
            job.logger.info("B second line")  # needs the handler lock that A holds
            seen["b_lock_wait"] = time.monotonic() - started

    def thread_a() -> None:
        b_holds_row.wait(timeout=30)
        with transaction.atomic():
            job = Job.objects.get(pk=app.job_id)
            started = time.monotonic()
            job.logger.info("A first line")  # takes the handler lock, then waits on B's row
            seen["a_emit"] = time.monotonic() - started
            seen["a_needs_rollback"] = connection.needs_rollback

    handler = next(h for h in Job(pk=app.job_id).logger.handlers if isinstance(h, JobLogHandler))
    _close_connection()
    with caplog.at_level(logging.INFO):
        b, a = _run_in_thread(thread_b), _run_in_thread(thread_a)
        waiting = wait_for(lambda: _waiting_backend(observer), timeout=20)
        assert isinstance(waiting, tuple)
        a_pid, a_xid, blockers = waiting
        assert blockers == [seen["b_pid"]]
        assert not handler.lock.acquire(blocking=False)  # A holds it while it waits in Postgres
        a_waits_on_row.set()
        # Past deadlock_timeout (1 s) Postgres has found nothing: A still waits, B sits idle in
        # transaction (it is not a lock waiter, so the deadlock detector cannot see the cycle).
        time.sleep(app.statement_timeout_s * 0.75)
        states = dict(observer.execute(
            "SELECT pid, CASE WHEN wait_event_type = 'Lock' THEN 'lock wait' ELSE state END "
            "FROM pg_stat_activity WHERE pid = ANY(%s)", [[a_pid, seen["b_pid"]]]).fetchall())
        assert states == {a_pid: "lock wait", seen["b_pid"]: "idle in transaction"}
        b_xid = observer.execute("SELECT backend_xid::text::bigint FROM pg_stat_activity WHERE pid = %s",
                                 [seen["b_pid"]]).fetchone()
        a.join(timeout=60)
        b.join(timeout=60)
    assert not a.is_alive() and not b.is_alive()
    assert seen["a_emit"] >= app.statement_timeout_s * 0.9
    assert seen["b_lock_wait"] >= app.statement_timeout_s * 0.6  # B waited for A's cancelled statement
    assert seen["a_needs_rollback"]
    assert any("canceling statement due to statement timeout" in r.getMessage() for r in caplog.records
               if r.getMessage().startswith("Failed to save logs"))
    assert b_xid is not None
    assert _xact_status(observer, a_xid) == "aborted" and _xact_status(observer, b_xid[0]) == "committed"
    stdout = _logs(observer, app.job_id)["stdout"]
    assert stdout[0].endswith("B second line") and stdout[1].endswith("B first line")
    assert not any(line.endswith("A first line") for line in stdout)
