"""The shipped scenarios show the effect their header promises (shortened forms), and the gate bites.

Each test runs a shipped scenario file through the real `contend run`, with only its sizes cut down,
and asserts the qualitative outcome of issue 7 on the summary it wrote.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from contend.errors import ExitCode
from contend.scenario import load_scenario
from tests.conftest import CONTEND

pytestmark = pytest.mark.slow

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
# The pull-worker scenarios leave the result workers a backlog that is not what they show: cut the drain.
PULL_CHANGE = {"warm_up_s": 0.5, "cool_down_s": 1, "drain_timeout_s": 30}


def _shortened(tmp_path: Path, name: str, change: dict[str, Any], workload: dict[str, Any],
               target: dict[str, Any] | None = None) -> Path:
    data = yaml.safe_load((SCENARIOS / f"{name}.yaml").read_text())
    data.update(change)
    data["target"].update(target or {})
    data["workloads"] = [{**data["workloads"][0], **workload}]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(scenario: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = subprocess.run([*CONTEND, "run", str(scenario), "--reports", str(tmp_path / "reports"), "--json"],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode in (ExitCode.OK, ExitCode.THRESHOLDS_FAILED), out.stderr
    printed = json.loads(out.stdout)
    return out, {name: v["metrics"] for name, v in printed["summary"]["variants"].items()}


def test_every_shipped_scenario_validates_and_says_what_it_shows() -> None:
    files = sorted(SCENARIOS.glob("*.yaml"))
    assert {f.stem for f in files} >= {"log-persist", "lock-mode", "log-store", "ack-wait",
                                       "poll-fairness", "presets", "ci-smoke"}
    for path in files:
        scenario = load_scenario(path)
        header = path.read_text().split("\nname:")[0]
        assert "Expect" in header, f"{path.name} must say what outcome to expect"
        assert "Scaled" in header, f"{path.name} must say what was scaled for a 2-core machine"
        assert scenario.expand()


@pytest.mark.timing  # bounds on lock waits and latency of the logs-off variant
def test_log_persist_on_piles_up_row_locks_and_off_does_not(tmp_path: Path) -> None:
    scenario = _shortened(tmp_path, "log-persist", {"warm_up_s": 1, "cool_down_s": 1},
                          {"rounds": 1, "timeout_s": 60})
    _, metrics = _run(scenario, tmp_path)
    on, off = metrics["logs-on"], metrics["logs-off"]
    assert on["blocked_max"] >= 8
    # The handler lock and the job row deadlock across layers; only the 30 s statement_timeout breaks
    # it, one waiter at a time, so POSTs miss the 60 s client timeout while a holder idles in its
    # transaction for longer than any statement may run.
    assert on["posts_ok"] < on["posts_total"] / 2
    assert on["idle_in_tx_max_age_s"] >= 30
    assert on["lock_wait_max_s"] >= 20  # waits end when statement_timeout (30 s) cancels them
    # The POSTs do not queue on the job row with logs off; the result workers may, after them.
    assert off["blocked_max_load"] <= 1
    assert off["drain_timed_out"] == 0 and off["results_processed_per_s"] > 0
    assert off["lock_wait_max_s"] < 1  # nobody waits on the row longer than a moment
    assert off["posts_ok"] == off["posts_total"] == 10
    assert off["latency_p95_s"] < 2


def test_ack_wait_short_redelivers_and_long_does_not(tmp_path: Path) -> None:
    scenario = _shortened(tmp_path, "ack-wait", PULL_CHANGE, {"duration_s": 35})
    _, metrics = _run(scenario, tmp_path)
    assert metrics["short-ack-wait"]["redeliveries"] > 0
    assert metrics["long-ack-wait"]["redeliveries"] == 0


@pytest.mark.timing  # compares when jobs start between two variants run one after the other
def test_poll_fairness_random_limit_1_starts_every_job_sooner(tmp_path: Path) -> None:
    # Its metrics come from the load's own records, written before the drain: a short one will do.
    # Half the images per job and per batch, at twice the time each: every length stays (a job takes
    # 6 pollers about 5 s and one poller 30 s, a batch 1.2 s, a poller reserves 3.6 s of work ahead)
    # and so does the request rate, but the result workers get half the results and keep up, so the
    # final counts do not wait 40 s for a backlog.
    scenario = _shortened(tmp_path, "poll-fairness", {**PULL_CHANGE, "drain_timeout_s": 5},
                          {"duration_s": 35, "per_image_s": 0.2, "batch_size": 6}, {"images_per_job": 150})
    _, metrics = _run(scenario, tmp_path)
    newest, random = metrics["newest-10"], metrics["random-1"]
    # Jobs start sooner: the typical job's first result comes much earlier, and no job starves that
    # newest-first would have served.
    assert random["first_result_s_p50"] < newest["first_result_s_p50"]
    assert random["starved_jobs"] <= newest["starved_jobs"]


def test_a_failing_threshold_makes_the_gate_exit_with_the_thresholds_code(tmp_path: Path) -> None:
    scenario = _shortened(tmp_path, "ci-smoke", {"warm_up_s": 0, "cool_down_s": 0,
                                                 "thresholds": ["posts_ok > 1000"]},
                          {"rounds": 1, "concurrency": 2, "batch": 5})
    out, metrics = _run(scenario, tmp_path)
    assert out.returncode == ExitCode.THRESHOLDS_FAILED
    assert metrics["default"]["posts_ok"] == 2
    run_dir = json.loads(out.stdout)["run_dir"]
    gate = subprocess.run([*CONTEND, "gate", run_dir, "--junit", str(tmp_path / "junit.xml")],
                          capture_output=True, text=True, timeout=120)
    assert gate.returncode == ExitCode.THRESHOLDS_FAILED
    assert "FAIL" in gate.stdout
    assert "failures=\"1\"" in (tmp_path / "junit.xml").read_text()
