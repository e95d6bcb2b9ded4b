"""A command workload in `contend run`: any program as the load, against an external target.

The user's server is tests/data/tiny_target.py; the program tests/data/load/command_load.py. Its
exit code is part of the variant's status, its own request records give latency figures, and
without records the report says plainly that the request metrics are absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from contend.run import RunResult, run_scenario
from contend.scenario import parse_scenario
from contend.stack import Stack
from tests.test_run_external import server  # noqa: F401  the tiny server fixture

pytestmark = pytest.mark.integration  # starts the tiny server, the samplers and the program

TOKEN = "own-command-token-3141"  # the program gets it as CONTEND_TOKEN and prints it
PROGRAM = Path(__file__).parent / "data" / "load" / "command_load.py"
SCENARIO = """\
name: own-command
target: {{kind: external, base_url: "http://127.0.0.1:{port}", dsn_env: OWN_COMMAND_DSN}}
workloads:
  - {{kind: command, run: [{python}, {program}, {mode}, "6"], timeout_s: 60}}
warm_up_s: 0
drain_wait_s: 0
cool_down_s: 0
sampling: {{pyspy: false, nats: false}}
"""


def _run(mode: str, port: int, tmp_path: Path, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> RunResult:
    monkeypatch.setenv("OWN_COMMAND_DSN", stack.dsn)
    text = SCENARIO.format(port=port, python=sys.executable, program=PROGRAM, mode=mode)
    return run_scenario(parse_scenario(text), tmp_path / "reports")


def _entry(result: RunResult) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads((result.run_dir / "summary.json").read_text())["variants"]["default"]
    return entry


def test_a_failing_command_fails_its_variant_with_its_last_lines(
        tmp_path: Path, stack: Stack, server: int, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("ANTENNA_TOKEN", TOKEN)
    result = _run("fail", server, tmp_path, stack, monkeypatch)
    outcome = result.outcomes[0]
    assert outcome.status == "failed"
    assert "exited with code 3" in (outcome.reason or "")
    assert "giving up: the last words of the load" in (outcome.reason or "")
    log = result.run_dir / "variants" / "default" / "load" / "command-0.log"
    assert "connecting to http://127.0.0.1" in log.read_text() and "with ***" in log.read_text()
    assert TOKEN not in log.read_text() and TOKEN not in (outcome.reason or "")
    assert _entry(result)["status"] == "failed"


def test_a_command_writing_request_records_gets_latency_figures(
        tmp_path: Path, stack: Stack, server: int, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    result = _run("records", server, tmp_path, stack, monkeypatch)
    assert result.outcomes[0].status == "ok", result.outcomes[0].reason
    metrics = _entry(result)["metrics"]
    assert metrics["requests_total"] == 6 and metrics["requests_failed"] == 0
    assert metrics['requests_total{name="ping"}'] == 6
    assert metrics['latency_p95_s{name="ping"}'] > 0
    assert "| ping |" in (result.run_dir / "report.md").read_text()


def test_a_command_without_records_gets_a_report_without_request_metrics(
        tmp_path: Path, stack: Stack, server: int, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    result = _run("quiet", server, tmp_path, stack, monkeypatch)
    assert result.outcomes[0].status == "ok", result.outcomes[0].reason
    entry = _entry(result)
    assert entry["metrics"]["requests_total"] is None and entry["metrics"]["latency_p95_s"] is None
    assert "requests_by_name" not in entry
    assert entry["metrics"]["edges_max"] is not None, "the Postgres sampler covered the program's run"
    said = "wrote no request records: request metrics (latency, failures, throughput) are absent"
    assert said in " ".join(entry["findings_text"])
    assert said in (result.run_dir / "report.md").read_text()
    assert said in (result.run_dir / "report.html").read_text()
    assert "done 6" in (result.run_dir / "variants" / "default" / "load" / "command-0.log").read_text()
