"""Your own load without processes: the workload models in a scenario, per-name figures and their
folding, thresholds that name a request, the live bar in task runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contend.analysis import load_variant
from contend.analysis.names import TOP_NAMES, name_metrics, name_rows
from contend.display import Planned, planned, progress_line
from contend.errors import ConfigError
from contend.gate import evaluate
from contend.load import LoadProgress
from contend.load.config import CommandLoad, Locustfile
from contend.load.records import LoadSummary, request_record
from contend.metrics import named_metric
from contend.scenario import load_scenario, parse_scenario
from contend.thresholds import parse_threshold

SCENARIO = """\
name: own
target: {kind: external, base_url: "http://127.0.0.1:8000"}
workloads:
  - {kind: locustfile, path: load/locustfile.py, users: 3, iterations: 2}
  - {kind: command, run: [k6, run, x.js]}
"""


def test_a_scenario_takes_the_workloads_paths_relative_to_its_file(tmp_path: Path) -> None:
    (tmp_path / "own.yaml").write_text(SCENARIO)
    scenario = load_scenario(tmp_path / "own.yaml")
    locust, command = scenario.workloads
    assert isinstance(locust, Locustfile) and isinstance(command, CommandLoad)
    assert locust.path == str(tmp_path / "load" / "locustfile.py")
    assert command.cwd == str(tmp_path / ".") and command.timeout_s == 600


@pytest.mark.parametrize(("workload", "message"), [
    ("{kind: locustfile, path: l.py}", "give exactly one of duration_s or iterations"),
    ("{kind: locustfile, path: l.py, duration_s: 5, iterations: 2}",
     "give exactly one of duration_s or iterations"),
    ("{kind: command, run: []}", "at least 1 item"),
    ("{kind: command, run: [x], shell: true}", "shell"),
])
def test_a_workload_of_your_own_is_checked(workload: str, message: str) -> None:
    text = f"name: x\nworkloads:\n  - {workload}\n"
    with pytest.raises(ConfigError) as caught:
        parse_scenario(text, "s.yaml")
    assert caught.value.message.startswith("s.yaml:3:") and message in caught.value.message


def test_one_locustfile_per_scenario() -> None:
    text = ("name: x\nworkloads:\n  - {kind: locustfile, path: a.py, iterations: 1}\n"
            "  - {kind: locustfile, path: b.py, iterations: 1}\n")
    with pytest.raises(ConfigError, match="at most one locustfile workload"):
        parse_scenario(text, "s.yaml")


def test_a_threshold_names_a_request() -> None:
    t = parse_threshold('latency_p95_s{name="/api/orders"} < 1')
    assert t.metric == 'latency_p95_s{name="/api/orders"}'
    assert str(t) == 'latency_p95_s{name="/api/orders"} < 1'
    assert parse_threshold("requests_failed{ name = '/a b' } == 0").metric == 'requests_failed{name="/a b"}'
    with pytest.raises(ValueError, match="no per-name figures"):
        parse_threshold('edges_max{name="x"} < 1')
    with pytest.raises(ValueError, match="unknown metric"):
        parse_threshold('latency_p96_s{name="x"} < 1')
    summary = {"scenario": "s", "baseline": "a", "variants": {
        "a": {"status": "ok", "metrics": {named_metric("latency_p95_s", "/api/orders"): 0.5}},
        "b": {"status": "ok", "metrics": {named_metric("latency_p95_s", "/api/orders"): 0.9}}}}
    checks = evaluate(summary, [t, parse_threshold('latency_p95_s{name="/api/orders"} <= 1.5x baseline'),
                                parse_threshold('latency_p95_s{name="/never"} < 1')]).checks
    assert [(c.variant, c.verdict) for c in checks] == [
        ("a", "pass"), ("a", "skip"), ("a", "fail"), ("b", "pass"), ("b", "fail"), ("b", "fail")]


def _variant(tmp_path: Path, names: dict[str, int]) -> Path:
    (tmp_path / "load").mkdir(parents=True)
    (tmp_path / "meta.json").write_text(json.dumps({"name": "v", "status": "ok"}))
    lines = []
    t = 1000.0
    for name, n in names.items():
        for i in range(n):
            lines.append(request_record(
                t0=t, t1=t + 0.01 * (i + 1), kind="request", status=200 if i else 500, sent=0, recv=2,
                error=None if i else "HTTP 500", job=None, worker="w0", name=name, method="GET"))
            t += 0.001
    (tmp_path / "load" / "requests-w0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return tmp_path


def test_per_name_figures_and_the_rest_folded(tmp_path: Path) -> None:
    names = {f"/n{k}": k + 2 for k in range(TOP_NAMES + 3)}
    run = load_variant(_variant(tmp_path, names))
    metrics = name_metrics(run)
    assert metrics[named_metric("requests_total", "/n0")] == 2
    assert metrics[named_metric("requests_failed", "/n0")] == 1
    assert metrics[named_metric("latency_max_s", "/n4")] == pytest.approx(0.06)
    rows = name_rows(run)
    assert [r["name"] for r in rows[:TOP_NAMES]] == [f"/n{k}" for k in range(TOP_NAMES + 2, 2, -1)]
    assert rows[-1]["name"] == "(3 other names)" and rows[-1]["requests_total"] == 2 + 3 + 4
    assert rows[-1]["requests_failed"] == 3 and rows[0]["method"] == "GET"


def test_a_programs_records_need_only_the_request_keys() -> None:
    summary = LoadSummary.from_records([
        {"t0": 1.0, "t1": 1.5, "kind": "request", "status": 200, "error": None, "name": "x", "method": "GET"},
        {"t0": 1.0, "t1": 2.0, "status": 0, "error": "ReadTimeout"}])
    assert summary.kinds["request"].ok == 1 and summary.kinds["request"].failed == 1
    assert summary.timeouts == 1 and summary.elapsed_s == 1.0


def test_the_live_bar_counts_task_runs_of_a_locustfile() -> None:
    plan = planned([Locustfile(kind="locustfile", path="l.py", users=4, iterations=5)])
    assert plan == Planned(posts=None, load_s=None, iterations=20)
    progress = LoadProgress(state="running", elapsed_s=3, requests_ok=30, requests_failed=0, in_flight=1,
                            p95_s=0.1, results=0, iterations=5)
    assert progress_line(plan, progress).startswith("task runs 5 of 20 ")
    assert planned([Locustfile(kind="locustfile", path="l.py", duration_s=30)]).load_s == 30


@pytest.mark.integration  # starts the load process
@pytest.mark.parametrize(("source", "user_classes", "said"), [
    ("from locust import HttpUser, task\nclass Shopper(HttpUser):\n    @task\n    def t(self): pass\n",
     ["Nobody"], "has no user class Nobody"),
    ("this is not python\n", [], "cannot load the locustfile: NameError"),
], ids=["an unknown user class", "module code that raises"])
def test_a_locustfile_that_does_not_load_fails_the_load_saying_why(
        tmp_path: Path, source: str, user_classes: list[str], said: str) -> None:
    from contend.errors import LoadError
    from contend.load import LoadTarget, run_load

    (tmp_path / "lf.py").write_text(source)
    workload = Locustfile(kind="locustfile", path=str(tmp_path / "lf.py"), user_classes=user_classes,
                          iterations=1)
    with pytest.raises(LoadError) as caught:
        run_load([workload], LoadTarget(base_url="http://127.0.0.1:9"), tmp_path / "load")
    assert said in caught.value.message


def test_a_run_refuses_a_missing_locustfile_before_it_starts_anything(tmp_path: Path) -> None:
    from contend.run import run_scenario

    (tmp_path / "own.yaml").write_text(SCENARIO)
    with pytest.raises(ConfigError, match=r"workloads\[0\].path: no locustfile .*load/locustfile.py"):
        run_scenario(load_scenario(tmp_path / "own.yaml"), tmp_path / "reports")
    assert not (tmp_path / "reports").exists()
