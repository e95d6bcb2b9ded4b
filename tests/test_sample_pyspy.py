"""How the py-spy sampler reacts to failing dumps (the dumps themselves: test_sample_attribution)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from contend.diagnosis.clients import app_name
from contend.diagnosis.threads import dump_basis, summarize_stacks
from contend.errors import SamplerError
from contend.sample import pyspy
from contend.sample.pyspy import PERMISSION_HINT, PySpySampler, stack_triggers


def failing(hint: str | None):
    def dumper(pid: int) -> list:
        raise SamplerError(f"py-spy cannot read pid {pid}", hint=hint)
    return dumper


def test_permission_error_before_any_dump_disables_stacks_with_one_warning() -> None:
    warnings: list[str] = []
    spy = PySpySampler({"web": [os.getpid()]}, dumper=failing(PERMISSION_HINT), on_warning=warnings.append)
    assert [r["error"] for r in spy.tick()] == [f"py-spy cannot read pid {os.getpid()}"]
    assert spy.tick() == []
    assert spy.disabled
    assert len(warnings) == 1 and "SYS_PTRACE" in warnings[0] and "without stacks" in warnings[0]


def test_a_failure_after_dumps_worked_is_transient() -> None:
    warnings: list[str] = []
    results: list = [[{"thread_id": 1, "frames": []}]]
    spy = PySpySampler({"worker": [os.getpid()]}, dumper=lambda pid: results[-1], on_warning=warnings.append)
    assert len(spy.tick()) == 1
    spy.dumper = failing(PERMISSION_HINT)
    assert all("error" in r for r in spy.tick() + spy.tick())
    assert not spy.disabled and len(warnings) == 1
    spy.dumper = lambda pid: results[-1]
    assert [r["role"] for r in spy.tick()] == ["worker"]


@pytest.mark.integration
def test_an_exited_process_is_no_longer_dumped() -> None:
    argv = [sys.executable, "-c", "import os; print(os.getpid())"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    gone = int(done.stdout)
    calls: list[int] = []

    def dumper(pid: int) -> list:
        calls.append(pid)
        raise SamplerError("no such process")

    spy = PySpySampler({"web": [gone]}, dumper=dumper)
    spy.tick()
    spy.tick()
    assert calls == [gone]


def test_summary_counts_only_threads_in_own_code() -> None:
    own = "/srv/app/"

    def thread(*files: str, active: bool = False) -> dict:
        return {"active": active, "frames": [{"name": f.rsplit("/", 1)[-1].split(".")[0], "filename": f}
                                             for f in files]}

    in_psycopg = thread("/venv/psycopg/connection.py", "/srv/app/progress.py")
    dumps = [
        # The second thread runs no code of the app (a pool thread): not counted.
        {"role": "worker", "threads": [in_psycopg, thread("/usr/lib/threading.py")]},
        {"role": "worker", "threads": [in_psycopg]},
        {"role": "worker", "threads": [thread("/srv/app/progress.py", active=True)]},
    ]
    assert summarize_stacks(dumps, [own]) == [
        "2 of 3 result workers in psycopg wait <- progress",
        "1 of 3 result workers in running <- progress",
    ]


def backend(pid: int, *, app: str = "", state: str = "active", blocked_by=(), state_age: float = 0.0,
            query_age: float = 0.0) -> dict:
    return {"pid": pid, "app": app, "state": state, "blocked_by": list(blocked_by), "state_age": state_age,
            "query_age": query_age}


def test_triggers_name_the_clients_of_long_waiters_their_blockers_and_idle_holders() -> None:
    holder = backend(10, app=app_name("worker", 501, 1, 1), state="idle in transaction", state_age=2.0)
    first = backend(11, app=app_name("web", 502, 1, 1), blocked_by=[10])
    second = backend(12, app=app_name("worker", 503, 1, 1), blocked_by=[10, 11])
    other = backend(13, app=app_name("worker", 504, 1, 1))
    tick = {"roots": [{"pid": 10}], "waits": [{"pid": 11, "age": 0.8}, {"pid": 12, "age": 0.1}]}
    rows = [holder, first, second, other]
    assert stack_triggers(tick, rows, wait_s=0.5, idle_in_tx_s=1.0) == [
        ("lock waiters", {501, 502}), ("idle in transaction", {501})]
    # Waits younger than the threshold and a holder idle for less: nothing to explain yet.
    young = {**tick, "waits": [{"pid": 11, "age": 0.2}, {"pid": 12, "age": 0.1}]}
    assert stack_triggers(young, [{**holder, "state_age": 0.5}, first, second, other],
                          wait_s=0.5, idle_in_tx_s=1.0) == []
    # Without waitstart (before Postgres 14) the query's age stands in; clients that do not name
    # themselves: every target.
    bare = [backend(10), backend(11, blocked_by=[10], query_age=3.0)]
    assert stack_triggers({"roots": [{"pid": 10}]}, bare, wait_s=0.5, idle_in_tx_s=1.0) == [
        ("lock waiters", None)]


def test_requests_are_rate_limited_per_process_and_limited_to_targets() -> None:
    calls: list[int] = []

    def dumper(pid: int) -> list:
        calls.append(pid)
        return []

    spy = PySpySampler({"web": [1], "worker": [2, 3]}, dumper=dumper, min_interval_s=60.0, max_per_s=100.0)
    spy.request("lock waiters", {2, 99})  # 99 is not a target
    assert [(r["pid"], r["reason"]) for r in spy.take_pending()] == [(2, "lock waiters")]
    spy.request("lock waiters", {2})  # dumped less than a minute ago
    spy.request("idle in transaction", None)
    assert sorted((r["pid"], r["reason"]) for r in spy.take_pending()) == [
        (1, "idle in transaction"), (3, "idle in transaction")]
    assert spy.take_pending() == [] and calls == [2, 1, 3]
    # The baseline dumps every target whatever the rate limit.
    assert sorted(r["pid"] for r in spy.tick("baseline")) == [1, 2, 3]


def test_run_serves_requests_at_once_and_the_baseline_on_its_clock() -> None:
    written: list[dict] = []
    done = threading.Event()

    def write(records: list) -> None:
        written.extend(records)
        if any(r["reason"] == "lock waiters" for r in records):
            done.set()

    spy = PySpySampler({"web": [1]}, dumper=lambda pid: [], write=write, baseline_s=3600.0,
                       min_interval_s=0.0, max_per_s=100.0)
    stop = threading.Event()
    runner = threading.Thread(target=spy.run, args=(stop,))
    runner.start()
    try:
        spy.request("lock waiters")
        assert done.wait(10)
    finally:
        stop.set()
        spy.stop_waiting()
        runner.join(5)
    assert not runner.is_alive()
    assert [r["reason"] for r in written] == ["baseline", "lock waiters"]


def test_dump_basis_says_how_many_dumps_and_why() -> None:
    dumps = [{"pid": 1, "reason": "lock waiters", "threads": [], "nonblocking": True}] * 3 + [
        {"pid": 2, "reason": "baseline", "threads": [], "nonblocking": True},
        {"pid": 2, "reason": "baseline", "threads": [], "error": "failed", "nonblocking": True},
    ]
    assert dump_basis(dumps) == ("4 dumps of 2 processes (3 lock waiters, 1 baseline); "
                                 "1 non-blocking dump failed (20%)")
    assert dump_basis([]) == "0 dumps of 0 processes"


def test_requested_dumps_share_a_budget_that_holds_one_round() -> None:
    calls: list[int] = []

    def dumper(pid: int) -> list:
        calls.append(pid)
        return []

    # Three targets: the bucket starts with three dumps; refills at one per 1000 s (never, here).
    spy = PySpySampler({"worker": [1, 2, 3]}, dumper=dumper, min_interval_s=0.0, max_per_s=0.001)
    spy.request("lock waiters", [1, 2])
    assert len(spy.take_pending()) == 2
    spy.request("lock waiters", [1, 2, 3])
    # One dump left in the bucket: the process dumped least recently (3, never) goes first.
    assert [r["pid"] for r in spy.take_pending()] == [3]
    spy.request("lock waiters", [1])
    assert spy.take_pending() == []  # dropped, not kept for later
    spy.tick("baseline")  # the baseline is outside the budget
    assert calls == [1, 2, 3, 1, 2, 3]


def test_dumps_taken_elsewhere_ask_the_budget_for_their_share() -> None:
    spy = PySpySampler({"worker": [1, 2, 3]}, dumper=lambda pid: [], max_per_s=0.001)
    assert spy.spend(3)  # the bucket holds one round of every target
    assert not spy.spend(1)  # empty: refused, nothing taken
    spy.request("lock waiters", [1])
    assert spy.take_pending() == []


@pytest.mark.integration
def test_a_dump_past_its_timeout_is_killed_and_reaped() -> None:
    # A process that stops itself stands for a dump that never ends.
    argv = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSTOP)"]
    code, _, _, _ = pyspy._run(argv, timeout=0.5)
    assert code is None


def test_the_run_loop_survives_an_unexpected_error() -> None:
    warnings: list[str] = []
    done = threading.Event()
    calls = iter([RuntimeError("boom")])

    def dumper(pid: int) -> list:
        error = next(calls, None)
        if error is not None:
            raise error
        done.set()
        return []

    spy = PySpySampler({"web": [1]}, dumper=dumper, on_warning=warnings.append, baseline_s=0.05)
    stop = threading.Event()
    runner = threading.Thread(target=spy.run, args=(stop,))
    runner.start()
    try:
        assert done.wait(10)
    finally:
        stop.set()
        spy.stop_waiting()
        runner.join(5)
    assert warnings and "boom" in warnings[0]
