"""A recorded run whose deadlock begins at a known moment: `contend run` finds it within one py-spy
round, says so on the live display as it happens, and keeps the time in the variant's meta.json.

The target is a command target: the tests' tiny HTTP server takes the load, and the wait-for graph
helper (tests/waitgraph_helper.py, deadlock mode) forms a cross-layer deadlock a few seconds into
it; the moment it stands is when the helper writes its info file (after Postgres shows the wait).
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from contend.display import RunDisplay
from contend.run import run_scenario
from contend.scenario import parse_scenario
from contend.stack import Stack
from contend.stack.process import free_port
from tests.test_command import TINY

pytestmark = pytest.mark.slow

HELPER = Path(__file__).with_name("waitgraph_helper.py")
PYSPY_ROUND_S = 2.0
"""The scenario's pyspy_interval_s: a process is dumped at most this often."""
WAIT_S = 0.5
"""pyspy_wait_s (the samplers' default): a lock wait this old asks for stacks, so the first dump of
a new wait comes this much after it begins."""

UP = """\
import os, subprocess, sys
target_dir = sys.argv[1]
env = {{"SAMPLE_DSN": {dsn!r}, "PATH": "/usr/bin:/bin", "HELPER_DELAY_S": "6"}}
helper = subprocess.Popen([sys.executable, {helper!r}, "deadlock", os.path.join(target_dir, "deadlock.json")],
                          env=env)
with open(os.path.join(target_dir, "helper.pid"), "w") as f:
    f.write(str(helper.pid))
os.execv(sys.executable, [sys.executable, {tiny!r}, "{port}", target_dir])
"""

FIXTURES = """\
import json, sys
pid = int(open(sys.argv[1] + "/helper.pid").read())
print(json.dumps({{"job_ids": [1], "base_url": "http://127.0.0.1:{port}", "dsn": {dsn!r},
                  "pyspy_pids": {{"web": [pid]}}}}))
"""

SCENARIO = """\
name: first-finding
target:
  kind: command
  up: [{python}, {up}, "{{target_dir}}"]
  ready: {{url: "http://127.0.0.1:{port}/", timeout_s: 30}}
  fixtures: [{python}, {fixtures}, "{{target_dir}}"]
  token_env: TINY_TOKEN
workloads:
  - {{kind: batched_post, batch: 2, concurrency: 1, duration_s: 16, timeout_s: 10}}
warm_up_s: 0
cool_down_s: 0
sampling: {{pyspy: true, nats: false, pyspy_interval_s: {round}}}
"""


@pytest.fixture()
def deadlock_dsn(stack: Stack) -> str:
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS first_finding_tests")
        conn.execute("CREATE DATABASE first_finding_tests")
    dsn = stack.dsn.rsplit("/", 1)[0] + "/first_finding_tests"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE wg_rows (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("INSERT INTO wg_rows SELECT g, 0 FROM generate_series(1, 20) g")
    return dsn


@pytest.mark.timing  # the first finding within a py-spy round of the deadlock's start
def test_a_deadlock_that_begins_mid_load_is_shown_live_and_timed_in_meta(
        tmp_path: Path, deadlock_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINY_TOKEN", "tiny-token-value-1234")
    port = free_port()
    up, fixtures = tmp_path / "up.py", tmp_path / "fixtures.py"
    up.write_text(UP.format(dsn=deadlock_dsn, helper=str(HELPER), tiny=TINY, port=port))
    fixtures.write_text(FIXTURES.format(dsn=deadlock_dsn, port=port))
    scenario = parse_scenario(SCENARIO.format(python=sys.executable, up=up, fixtures=fixtures, port=port,
                                              round=PYSPY_ROUND_S))
    out = io.StringIO()
    try:
        with RunDisplay(Console(file=out, force_terminal=False, width=200)) as display:
            result = run_scenario(scenario, tmp_path / "reports", observer=display)
    finally:
        with psycopg.connect(deadlock_dsn, autocommit=True) as conn:  # the helper's sessions, if any
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    variant = result.run_dir / "variants" / "default"
    meta = json.loads((variant / "meta.json").read_text())
    assert meta["status"] == "ok", meta["reason"]
    known = (variant / "target" / "deadlock.json").stat().st_mtime - meta["phases"]["load"]["start"]
    first = meta["first_finding_s"]["cross_layer_deadlock"]
    assert 0 < known < 16  # the deadlock began during the load
    assert known - WAIT_S <= first <= known + WAIT_S + PYSPY_ROUND_S, (known, first)
    live = out.getvalue()
    shown = re.search(r"finding: (\d+\.\d) s cross-layer deadlock: (row_first <-> update_row|"
                      r"update_row <-> row_first), seen \d+x", live)
    assert shown is not None, live
    assert shown[1] == f"{first:.1f}"
    print(f"deadlock at {known:.2f} s into the load, first found at {first:.2f} s")
