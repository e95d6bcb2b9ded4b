"""examples/django-hotrow end to end, scaled down: a Django app that is not Antenna, its own
locustfile, a command target; the select_for_update view's variant shows a blocker chain whose
dominant root blocker sits in the example's own view function, the other view's variant none."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from contend.load.config import Locustfile
from contend.run import run_scenario
from contend.scenario import load_scenario

# Two Postgres servers, two Django servers, locust, the samplers. ``timing``: its holder keeps the row
# for 0.2 s, and the holder's stack is taken only if a dump catches it within that hold, which a
# machine loaded by other tests' stacks makes late.
pytestmark = [pytest.mark.slow, pytest.mark.timing]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "django-hotrow"


def test_the_hot_row_example_finds_the_lock_in_its_own_view(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the target's cwd is relative to the folder contend runs in
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    scenario = load_scenario(EXAMPLE / "scenario.yaml")
    load = scenario.workloads[0]
    assert isinstance(load, Locustfile) and Path(load.path) == EXAMPLE / "locustfile.py"
    scenario = scenario.model_copy(update={"workloads": [load.model_copy(update={"duration_s": 5.0})]})
    result = run_scenario(scenario, tmp_path / "reports")
    assert [o.status for o in result.outcomes] == ["ok", "ok"], [o.reason for o in result.outcomes]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    locked: dict[str, Any] = summary["variants"]["locked"]
    free: dict[str, Any] = summary["variants"]["free"]

    assert locked["metrics"]["edges_max"] >= 1 and locked["metrics"]["blocked_max"] >= 1
    dominant = [f for f in locked["findings"] if f["kind"] == "dominant_root_blocker"]
    assert dominant, locked["findings_text"]
    holder = dominant[0]["threads"][0]
    assert "buy_locked" in holder["path"].split(" -> "), dominant[0]["text"]  # the view, paying in it
    assert holder["file"].endswith("examples/django-hotrow/shop/views.py")
    assert "FOR UPDATE" in dominant[0]["statement"].upper()

    assert free["metrics"]["edges_max"] == 0 and free["metrics"]["blocked_max"] == 0
    assert not [f for f in free["findings"] if f["kind"] == "dominant_root_blocker"]
    for entry in (locked, free):
        assert entry["metrics"]['requests_total{name="/buy/[id]/"}'] > 0
        assert entry["metrics"]['requests_failed{name="/buy/[id]/"}'] == 0
