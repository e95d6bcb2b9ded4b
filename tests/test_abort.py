"""ci-smoke with ``abort: true`` on its edges threshold: the broken flag stops the variant early, exit 1,
with the stopping threshold in the JUnit XML; the fixed flag runs to the end and passes."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from contend.errors import ExitCode
from tests.conftest import CONTEND

pytestmark = pytest.mark.slow

CI_SMOKE = Path(__file__).resolve().parent.parent / "scenarios" / "ci-smoke.yaml"


EDGES = "edges_max < 3"
"""ci-smoke's edges threshold, as tight as its header's expectation (edges max 0-2 with the fix): the
broken flag's deadlock holds 4 edges, which "< 5" lets pass."""


def _ci_smoke(tmp_path: Path, log_persist: bool) -> Path:
    data = yaml.safe_load(CI_SMOKE.read_text())
    data["target"]["flags"] = {"JOB_LOG_PERSIST_ENABLED": log_persist}
    data["thresholds"] = [{"check": EDGES, "abort": True}
                          if (t["check"] if isinstance(t, dict) else t).startswith("edges_max") else t
                          for t in data["thresholds"]]
    path = tmp_path / "ci-smoke.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(tmp_path: Path, log_persist: bool) -> tuple[int, dict[str, Any], ET.Element]:
    junit = tmp_path / "junit.xml"
    out = subprocess.run([*CONTEND, "run", str(_ci_smoke(tmp_path, log_persist)), "--reports",
                          str(tmp_path / "reports"), "--junit", str(junit)],
                         capture_output=True, text=True, timeout=900)
    run_dir = next((tmp_path / "reports").iterdir())
    meta = json.loads((run_dir / "variants" / "default" / "meta.json").read_text())
    assert junit.exists(), out.stderr
    return out.returncode, meta, ET.fromstring(junit.read_text())


@pytest.mark.timing  # the threshold stops the variant within 15 s
def test_the_broken_flag_stops_ci_smoke_early_and_names_the_threshold(tmp_path: Path) -> None:
    code, meta, junit = _run(tmp_path, log_persist=True)
    assert code == ExitCode.THRESHOLDS_FAILED
    stopped = meta["stopped"]
    assert meta["status"] == "stopped" and stopped["threshold"] == EDGES
    assert stopped["at_s"] <= 15.0, stopped
    at = f"{stopped['at_s']:.1f} s"
    assert meta["reason"] == stopped["text"] and stopped["text"].startswith(f"stopped at {at}: ")
    assert "drain" not in meta["phases"]  # the drain is skipped
    case = junit.find(f".//testcase[@name='{EDGES}']")
    assert case is not None and case.get("classname") == "contend.ci-smoke.default"
    failure = case.find("failure")
    assert failure is not None and f"stopped the variant at {at}" in failure.get("message", "")
    print(f"ci-smoke with log persistence stopped {at} after the load's start: {stopped['text']}")


def test_the_fixed_flag_runs_ci_smoke_to_the_end_and_passes(tmp_path: Path) -> None:
    code, meta, junit = _run(tmp_path, log_persist=False)
    assert code == ExitCode.OK, junit
    assert meta["status"] == "ok" and meta["stopped"] is None and "drain" in meta["phases"]
    assert junit.find(".//failure") is None
