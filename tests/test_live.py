"""The live figures of a running variant: growing metrics, findings as they appear, abort thresholds."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from contend.display import RunDisplay
from contend.errors import ConfigError
from contend.gate import evaluate, render_junit
from contend.live import LiveFigures, decided
from contend.metrics import GROWING, METRICS
from contend.scenario import parse_scenario
from contend.thresholds import parse_threshold

LOAD_START = 1_800_000_000.0
PYSPY_ROUND_S = 2.0
DEADLOCK_AT_S = 5.0
"""The recorded deadlock: its row wait shows in the ticks from 5.0 s after the load's start."""
JOB_RESULT = {"pid": 41, "tid": 43, "backend_pid": 6012, "function": "job_result", "file": "/srv/views.py",
              "line": 299}
CACHALOT = {"pid": 41, "tid": 44, "backend_pid": 6016, "function": "_cachalot", "file": "/srv/apps.py",
            "line": 58}


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _tick(t: float) -> dict[str, Any]:
    stuck = t - LOAD_START >= DEADLOCK_AT_S
    edges = 1 + 3 * int(t - LOAD_START - DEADLOCK_AT_S) if stuck else 0
    return {"t": t, "edges": edges, "blocked": int(stuck), "depth": int(stuck),
            "idle_in_tx": 0, "idle_in_tx_max_age": 0.0,
            "waits": [{"pid": 6016, "waitstart": LOAD_START + DEADLOCK_AT_S,
                       "age": round(t - LOAD_START - DEADLOCK_AT_S, 3)}] if stuck else []}


def _graph(t: float) -> dict[str, Any]:
    stuck = t - LOAD_START >= DEADLOCK_AT_S
    found = [{"kind": "cross_layer_deadlock", "key": "41:43|41:44", "t": t, "threads": [JOB_RESULT, CACHALOT],
              "text": "Cross-layer deadlock of 2 threads."}] if stuck else []
    return {"t": t, "locals": True, "threads": {}, "edges": [],
            "gauges": {"python_lock_waiters": int(stuck), "idle_in_tx_blocked_in_app": 0}, "findings": found}


def _replay(folder: Path, until_s: float, figures: LiveFigures, display: RunDisplay,
            phases: dict[str, dict[str, Any]]) -> None:
    """Write the records of a run as its samplers would (ticks at 10 Hz, a py-spy round every 2 s),
    polling the live figures every quarter second as `contend run` does."""
    samples = folder / "samples"
    for step in range(int(until_s * 40)):
        t = LOAD_START + step / 40
        if step % 4 == 0:
            _append(samples / "pg_ticks.jsonl", [_tick(t)])
        if step % int(PYSPY_ROUND_S * 40) == 0:
            _append(samples / "waitgraph.jsonl", [_graph(t)])
        if step % 10 == 9:
            new = figures.poll(phases)
            display.findings(list(figures.findings.values()), new)


def test_a_recorded_deadlock_is_found_within_one_pyspy_round_of_its_start(tmp_path: Path) -> None:
    out = io.StringIO()
    display = RunDisplay(Console(file=out, force_terminal=False, width=120))
    display.variant_started(1, 1, "logs-on")
    figures = LiveFigures(tmp_path)
    _replay(tmp_path, 12.0, figures, display, {"load": {"start": LOAD_START, "end": None}})
    first = figures.first_finding_s()["cross_layer_deadlock"]
    assert DEADLOCK_AT_S <= first <= DEADLOCK_AT_S + PYSPY_ROUND_S
    printed = [line for line in out.getvalue().splitlines() if "finding" in line]
    assert printed == [f"  finding: {first:.1f} s cross-layer deadlock: job_result <-> _cachalot, seen 1x"]
    seen = figures.findings[("cross_layer_deadlock", "41:43|41:44")].seen
    assert seen >= 3 and display.found == [f"{first:.1f} s cross-layer deadlock: job_result <-> _cachalot, "
                                           f"seen {seen}x"]
    display.variant_finished("logs-on", "ok", None)
    assert out.getvalue().splitlines()[-1].strip() == display.found[0]


def test_growing_metrics_follow_the_ticks_from_the_loads_start(tmp_path: Path) -> None:
    _append(tmp_path / "samples" / "pg_ticks.jsonl", [_tick(LOAD_START - 1.0) | {"edges": 99}])
    figures = LiveFigures(tmp_path)
    _replay(tmp_path, 8.0, figures, RunDisplay(Console(file=io.StringIO())),
            {"load": {"start": LOAD_START, "end": None}})
    ticks = [json.loads(line) for line in (tmp_path / "samples" / "pg_ticks.jsonl").read_text().splitlines()]
    during = [t for t in ticks if t["t"] >= LOAD_START]
    assert figures.values["edges_max"] == figures.values["edges_max_load"] == max(t["edges"] for t in during)
    assert "edges_max_drain" not in figures.values
    assert figures.values["lock_wait_max_s"] == max(w["age"] for t in during for w in t["waits"])
    assert figures.values["cross_layer_deadlocks"] == 1  # one episode: every graph since shows it


def test_an_abort_threshold_stops_when_a_growing_metric_crosses_it(tmp_path: Path) -> None:
    figures = LiveFigures(tmp_path)
    phases = {"load": {"start": LOAD_START, "end": None}}
    thresholds = [parse_threshold("edges_max_load < 10", abort=True), parse_threshold("edges_max < 1")]
    _replay(tmp_path, 5.5, figures, RunDisplay(Console(file=io.StringIO())), phases)
    # edges_max < 1 failed long ago, but it does not abort
    assert figures.values["edges_max_load"] < 10 and decided(thresholds, figures) is None
    _append(tmp_path / "samples" / "pg_ticks.jsonl", [_tick(LOAD_START + 9.0)])
    figures.poll(phases)
    stop = decided(thresholds, figures)
    assert stop is not None and stop.text() == "stopped at 9.0 s: edges_max_load 13 >= 10"
    assert stop.record()["threshold"] == "edges_max_load < 10"


def test_the_gate_names_the_threshold_that_stopped_a_variant() -> None:
    t = parse_threshold("edges_max_load < 10", abort=True)
    summary = {"scenario": "ci-smoke", "variants": {"logs-on": {
        "status": "stopped", "metrics": {"edges_max_load": 9, "post_ok_ratio": 1},
        "stopped": {"threshold": "edges_max_load < 10", "value": 37, "at_s": 12.3}}}}
    result = evaluate(summary, [t, parse_threshold("post_ok_ratio == 1")])
    stopping, other = result.checks
    assert (stopping.verdict, stopping.value) == ("fail", 37)
    assert stopping.reason == "stopped the variant at 12.3 s"
    assert other.verdict == "pass"
    case = ET.fromstring(render_junit(result)).find(".//testcase[@name='edges_max_load < 10']")
    assert case is not None
    failure = case.find("failure")
    assert failure is not None and "stopped the variant at 12.3 s" in failure.get("message", "")
    assert case.get("classname") == "contend.ci-smoke.logs-on"


def test_only_growing_metrics_under_an_upper_bound_may_abort() -> None:
    assert set(GROWING) <= set(METRICS)
    base = "name: s\nworkloads: [{kind: batched_post, batch: 5, concurrency: 1, rounds: 1}]\nthresholds:\n"
    ok = parse_scenario(base + "  - {check: edges_max_load < 10, abort: true}\n")
    assert ok.thresholds_by_variant()["default"][0].abort
    for check, words in (("latency_p95_s < 1", "latency_p95_s is known only at the end"),
                         ("post_ok_ratio == 1", "post_ok_ratio is known only at the end"),
                         ("edges_max > 3", "only < or <= fail for good"),
                         ("edges_max <= 1x baseline", "absolute limit")):
        with pytest.raises(ConfigError) as caught:
            parse_scenario(base + f"  - {{check: {check}, abort: true}}\n")
        message = str(caught.value)
        assert words in message and "cannot abort" in message and "\n" not in message.strip()
