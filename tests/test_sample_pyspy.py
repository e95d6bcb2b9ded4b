"""How the py-spy sampler reacts to failing dumps (the dumps themselves: test_sample_attribution)."""

from __future__ import annotations

import os
import subprocess
import sys

from contend.errors import SamplerError
from contend.sample.pyspy import PERMISSION_HINT, PySpySampler, summarize_stacks


def failing(hint: str | None):
    def dumper(pid: int) -> list:
        raise SamplerError(f"py-spy cannot read pid {pid}", hint=hint)
    return dumper


def test_permission_error_before_any_dump_disables_stacks_with_one_warning() -> None:
    warnings: list[str] = []
    spy = PySpySampler({"web": [os.getpid()]}, dumper=failing(PERMISSION_HINT), on_warning=warnings.append)
    assert spy.tick() == [] and spy.tick() == []
    assert spy.disabled
    assert len(warnings) == 1 and "SYS_PTRACE" in warnings[0] and "without stacks" in warnings[0]


def test_a_failure_after_dumps_worked_is_transient() -> None:
    warnings: list[str] = []
    results: list = [[{"thread_id": 1, "frames": []}]]
    spy = PySpySampler({"worker": [os.getpid()]}, dumper=lambda pid: results[-1], on_warning=warnings.append)
    assert len(spy.tick()) == 1
    spy.dumper = failing(PERMISSION_HINT)
    assert spy.tick() == [] and spy.tick() == []
    assert not spy.disabled and len(warnings) == 1
    spy.dumper = lambda pid: results[-1]
    assert [r["role"] for r in spy.tick()] == ["worker"]


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
