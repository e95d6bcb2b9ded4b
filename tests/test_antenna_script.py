"""scenarios/antenna-script.yaml: Antenna's own load script as a command workload.

The end-to-end test needs the script from a checkout of RolnickLab/antenna, named by
ANTENNA_LOAD_SCRIPT, and is skipped without it (saying so); the refusal without it is always checked.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from contend.load.config import CommandLoad
from contend.run import run_scenario
from contend.scenario import Scenario, load_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "antenna-script.yaml"
MISSING = "set ANTENNA_LOAD_SCRIPT to the path of Antenna's scripts/load_test_result_endpoint.py"


def _scenario() -> tuple[Scenario, CommandLoad]:
    scenario = load_scenario(SCENARIO)
    command = scenario.workloads[0]
    assert isinstance(command, CommandLoad)
    return scenario, command


@pytest.mark.integration  # runs the scenario's shell command
def test_without_the_script_the_command_says_what_to_set(tmp_path: Path) -> None:
    _, command = _scenario()
    env = {k: v for k, v in os.environ.items() if k != "ANTENNA_LOAD_SCRIPT"}
    done = subprocess.run(command.run, env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 2
    assert MISSING in done.stderr


@pytest.mark.slow  # the reference server, the samplers and Antenna's script
def test_antennas_script_loads_the_reference_server(tmp_path: Path) -> None:
    script = os.environ.get("ANTENNA_LOAD_SCRIPT")
    if not script or not Path(script).is_file():
        pytest.skip(MISSING)
    scenario, command = _scenario()
    env = {"LOAD_BATCH": "10", "LOAD_CONCURRENCY": "3", "LOAD_ROUNDS": "1"}
    small = command.model_copy(update={"env": env})
    scenario = scenario.model_copy(update={
        "workloads": [small], "variants": [v for v in scenario.variants if v.name == "logs-off"],
        "target": scenario.target.model_copy(update={"images_per_job": 30, "worker_concurrency": 2}),
        "warm_up_s": 0.0, "cool_down_s": 0.0})
    result = run_scenario(scenario, tmp_path / "reports")
    assert [o.status for o in result.outcomes] == ["ok"], result.outcomes[0].reason
    log = (result.run_dir / "variants" / "logs-off" / "load" / "command-0.log").read_text()
    assert "round 0: ok=3/3" in log, log
    entry = json.loads((result.run_dir / "summary.json").read_text())["variants"]["logs-off"]
    assert entry["metrics"]["requests_total"] is None
    assert "request metrics (latency, failures, throughput) are absent" in " ".join(entry["findings_text"])
    assert entry["metrics"]["edges_max_load"] is not None
