"""The locustfile workload in the load processes, against tests/data/tiny_target.py: stopped mid-run
it keeps its records and leaves nothing running; `contend load locustfile` runs one alone."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from contend.load import LoadTarget, read_records
from contend.load.config import Locustfile
from contend.load.launcher import LoadRun
from tests.conftest import contend, processes_mentioning, wait_for
from tests.test_run_external import server  # noqa: F401  the tiny server fixture

pytestmark = pytest.mark.integration  # the tiny server and the load processes

LOCUSTFILE = Path(__file__).parent / "data" / "load" / "two_classes.py"


def test_a_stopped_locustfile_run_keeps_its_records_and_stops_everything(
        tmp_path: Path, server: int) -> None:  # noqa: F811
    workload = Locustfile(kind="locustfile", path=str(LOCUSTFILE), users=3, duration_s=300)
    run = LoadRun([workload], LoadTarget(base_url=f"http://127.0.0.1:{server}"), tmp_path, load_workers=1)
    run.start()
    stop = threading.Event()
    try:
        wait_for(lambda: (p := run.poll()) is not None and p.requests_ok >= 10, timeout=60)
        stop.set()
        summary = run.wait(stop=stop)
    finally:
        run.stop()
    assert summary.status == "partial"
    records = list(read_records(tmp_path))
    assert len(records) >= 10 and {r["kind"] for r in records} == {"request"}
    assert {r["name"] for r in records} <= {"jobs", "job", "missing"}
    assert not processes_mentioning(str(tmp_path / "plan.json"))


def test_contend_load_locustfile_runs_one_alone(tmp_path: Path, server: int) -> None:  # noqa: F811
    done = contend("load", "locustfile", str(LOCUSTFILE), "--url", f"http://127.0.0.1:{server}",
                   "--users", "2", "--iterations", "3", "--user-class", "Reader", "--out", str(tmp_path),
                   env={"ANTENNA_TOKEN": None, "CONTEND_TOKEN": None})
    assert done.returncode == 0, done.stderr
    records = list(read_records(tmp_path / "load"))
    assert len(records) == 6 and {r["name"] for r in records} == {"jobs"}
    stats = json.loads((tmp_path / "load" / "locust-stats.json").read_text())
    assert stats == [{"method": "GET", "name": "jobs", "num_requests": 6, "num_failures": 0}]
