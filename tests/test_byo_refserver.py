"""scenarios/byo-refserver.yaml end to end: the reference server as a black box, two flag variants."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from contend.errors import ExitCode
from tests.conftest import CONTEND, stack_processes, wait_for

pytestmark = pytest.mark.slow

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "byo-refserver.yaml"


def test_byo_refserver_compares_two_flag_variants_and_leaves_nothing(tmp_path: Path) -> None:
    token = secrets.token_hex(20)
    # `contend` of this interpreter on PATH, as the scenario's up command expects.
    env = {**os.environ, "CONTEND_REF_TOKEN": token,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run([*CONTEND, "run", str(SCENARIO), "--reports", str(tmp_path), "--json"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == ExitCode.OK, out.stderr
    printed = json.loads(out.stdout)
    run_dir = Path(printed["run_dir"])
    metrics = {name: v["metrics"] for name, v in printed["summary"]["variants"].items()}
    on, off = metrics["logs-on"], metrics["logs-off"]
    assert off["post_ok_ratio"] == 1
    # The flag reached the black box through the environment, and it shows: the job-log writes
    # queue the POSTs behind the job row.
    for name, value in (("logs-on", "true"), ("logs-off", "false")):
        server = json.loads((run_dir / "variants" / name / "target" / "server.json").read_text())
        assert server["flags"]["JOB_LOG_PERSIST_ENABLED"] == value
        assert server["flags"]["ML_WORKER_CONCURRENCY"] == "2"
    assert on["edges_max_load"] > off["edges_max_load"]
    assert on["latency_p95_s"] > off["latency_p95_s"]
    report = (run_dir / "report.md").read_text()
    assert "logs-on vs logs-off" in report and "JOB_LOG_PERSIST_ENABLED=true" in report
    # Every process the commands started is gone, and the token was written nowhere in the run folder.
    pids = [pid for name in ("logs-on", "logs-off") for pids in json.loads(
        (run_dir / "variants" / name / "target" / "fixtures.json").read_text())["pyspy_pids"].values()
        for pid in pids]
    assert pids
    wait_for(lambda: not [p for p in pids if psutil.pid_exists(p)], timeout=30)
    assert stack_processes(run_dir) == []
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), path
