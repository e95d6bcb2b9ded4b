"""The gate: thresholds on hand-written summary.json files, its renderers, and `contend gate`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from contend.gate import (
    GateResult,
    evaluate,
    gate_run,
    parse_threshold,
    render_junit,
    render_markdown,
    render_table,
)
from tests.conftest import contend

RUNS = Path(__file__).parent / "data" / "runs"
DEMO = RUNS / "gate-demo"
EARLIER = RUNS / "gate-demo-earlier.json"
ROOT = Path(__file__).parent.parent


def summary(metrics: dict[str, dict[str, Any]], baseline: str = "base", **status: str) -> dict[str, Any]:
    return {"scenario": "t", "status": "complete", "baseline": baseline,
            "variants": {name: {"status": status.get(name, "ok"), "reason": "web died" if name in status
                                else None, "metrics": m} for name, m in metrics.items()}}


RUN = summary({"base": {"edges_max": 1, "latency_p95_s": 5.0, "post_ok_ratio": 1.0, "redeliveries": 0},
               "new": {"edges_max": 6, "latency_p95_s": 5.9, "post_ok_ratio": 0.9, "redeliveries": None}})
EARLIER_RUN = summary({"new": {"edges_max": 5, "latency_p95_s": 4.0}})

CASES = [
    # (threshold, tolerance, tolerance_abs, baseline summary, verdict of "new", its limit)
    ("edges_max < 5", None, 0.0, None, "fail", 5.0),
    ("edges_max <= 6", None, 0.0, None, "pass", 6.0),
    ("edges_max < 5", 0.2, 0.0, None, "fail", 5.0),       # 6 < 5 + 1 is false
    ("edges_max < 5", 0.21, 0.0, None, "pass", 5.0),      # 6 < 5 + 1.05
    ("edges_max < 5", None, 1.5, None, "pass", 5.0),      # absolute allowance
    ("edges_max < 5 ±25%", None, 0.0, None, "pass", 5.0),
    ("post_ok_ratio == 1", None, 0.0, None, "fail", 1.0),
    ("post_ok_ratio >= 0.9", None, 0.0, None, "pass", 0.9),
    ("post_ok_ratio > 0.9", None, 0.0, None, "fail", 0.9),
    ("post_ok_ratio == 1", 0.1, 0.0, None, "pass", 1.0),  # |0.9 - 1| <= 0.1
    ("latency_p95_s <= 1.1x baseline", None, 0.0, None, "fail", 5.5),
    ("latency_p95_s <= 1.1x baseline", 0.1, 0.0, None, "pass", 5.5),   # 5.9 <= 5.5 + 0.55
    ("latency_p95_s <= baseline", None, 1.0, None, "pass", 5.0),      # factor 1 by default
    ("latency_p95_s < 1.2 x baseline", None, 0.0, None, "pass", 6.0),
    ("latency_p95_s <= 1.2x previous", None, 0.0, EARLIER_RUN, "fail", 4.8),
    ("latency_p95_s <= 1.5x previous", None, 0.0, EARLIER_RUN, "pass", 6.0),
    ("latency_p95_s <= 1.2x previous", None, 0.0, None, "skip", None),
    ("edges_max == 1x previous ±20%", None, 0.0, EARLIER_RUN, "pass", 5.0),
    ("redeliveries == 0", None, 0.0, None, "fail", None),             # null metric
    ("timeouts == 0", None, 0.0, None, "fail", None),                 # absent metric
    ("post_ok_ratio <= 1x previous", None, 0.0, EARLIER_RUN, "fail", None),  # absent in the earlier run
]


@pytest.mark.parametrize(("text", "tolerance", "tolerance_abs", "earlier", "verdict", "limit"), CASES,
                         ids=[f"{c[0]} tol={c[1]} abs={c[2]} prev={c[3] is not None}" for c in CASES])
def test_threshold_verdicts(text: str, tolerance: float | None, tolerance_abs: float,
                            earlier: dict[str, Any] | None, verdict: str, limit: float | None) -> None:
    threshold = parse_threshold(text, tolerance, tolerance_abs, variants=["new"])
    (check,) = evaluate(RUN, [threshold], earlier).checks
    assert (check.variant, check.verdict) == ("new", verdict)
    assert check.limit == (pytest.approx(limit) if limit is not None else None)
    if verdict != "pass":
        assert check.reason or check.value is not None


def test_missing_metric_says_why() -> None:
    (check,) = evaluate(RUN, [parse_threshold("redeliveries == 0", variants=["new"])]).checks
    assert check.reason == "metric redeliveries is missing or not a number"


def test_relative_to_baseline_is_skipped_on_the_baseline_itself() -> None:
    checks = evaluate(RUN, [parse_threshold("latency_p95_s <= 1.2x baseline")]).checks
    assert [(c.variant, c.verdict, c.reason) for c in checks] == [
        ("base", "skip", "this is the baseline variant"), ("new", "pass", None)]


def test_a_failed_variant_fails_every_threshold_and_counts_without_any() -> None:
    run = summary({"base": {"edges_max": 0}, "new": {"edges_max": 0}}, new="failed")
    result = evaluate(run, [parse_threshold("edges_max < 5")])
    assert [(c.variant, c.verdict, c.reason) for c in result.checks] == [
        ("base", "pass", None), ("new", "fail", "variant failed: web died")]
    bare = evaluate(run, {"base": [], "new": []})
    rows = [(c.variant, str(c.threshold), c.verdict) for c in bare.checks]
    assert rows == [("new", "status == ok", "fail")]
    assert not bare.passed


def test_a_variant_missing_from_the_summary_fails() -> None:
    result = evaluate(RUN, {"gone": [parse_threshold("edges_max < 5")]})
    (check,) = result.checks
    assert (check.variant, check.verdict) == ("gone", "fail")
    assert check.reason == "variant missing from summary.json"


def test_relative_to_a_failed_baseline_fails() -> None:
    run = summary({"base": {"latency_p95_s": 1.0}, "new": {"latency_p95_s": 1.0}}, base="failed")
    checks = evaluate(run, [parse_threshold("latency_p95_s <= 2x baseline")]).checks
    assert [(c.variant, c.verdict, c.reason) for c in checks] == [
        ("base", "fail", "variant failed: web died"), ("new", "fail", "baseline variant 'base' failed")]


def test_relative_to_a_baseline_without_value_fails() -> None:
    run = summary({"base": {"latency_p95_s": None}, "new": {"latency_p95_s": 1.0}})
    (_, check) = evaluate(run, [parse_threshold("latency_p95_s <= 2x baseline")]).checks
    assert (check.verdict, check.reason) == ("fail", "baseline variant 'base' has no value for latency_p95_s")


def test_threshold_text_round_trips() -> None:
    for text in ("edges_max < 5", "latency_p95_s <= 1.2x baseline ±10%", "blocked_p95 >= 0.5x previous",
                 "post_ok_ratio == 1"):
        assert str(parse_threshold(text)) == text
    assert str(parse_threshold("latency_p95_s<=1.2*baseline")) == "latency_p95_s <= 1.2x baseline"


def test_metric_names_match_the_record_contract() -> None:
    from contend.metrics import MEANINGS, METRICS

    records = (ROOT / "docs" / "records.md").read_text()
    listed = re.search(r"Metric names \(used by thresholds\):(.*?)\n\n", records, re.S)
    assert listed is not None
    assert tuple(re.findall(r"`(\w+)`", listed.group(1))) == METRICS
    assert all(MEANINGS[m] for m in METRICS)


@pytest.mark.integration  # a fresh interpreter's sys.modules
def test_the_gate_does_not_load_pandas() -> None:
    code = "import sys, contend.gate; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def demo(baseline: Path | None = None) -> GateResult:
    return gate_run(DEMO, baseline)


def test_gate_run_on_the_demo_folder() -> None:
    result = demo()
    assert [(c.variant, str(c.threshold), c.verdict) for c in result.checks] == [
        ("logs-on", "post_ok_ratio == 1", "fail"),
        ("logs-on", "latency_p95_s <= 1.2x baseline ±10%", "fail"),
        ("logs-on", "blocked_p95 <= 1x previous (±0.5 abs)", "skip"),
        ("logs-on", "redeliveries == 0", "fail"),
        ("logs-off", "post_ok_ratio == 1", "pass"),
        ("logs-off", "latency_p95_s <= 1.2x baseline ±10%", "skip"),
        ("logs-off", "blocked_p95 <= 1x previous (±0.5 abs)", "skip"),
        ("logs-off", "redeliveries == 0", "pass"),
        ("logs-off", "edges_max < 5", "pass"),
    ]
    with_earlier = [(c.variant, c.verdict) for c in demo(EARLIER).checks if c.threshold.ref == "previous"]
    assert with_earlier == [("logs-on", "fail"), ("logs-off", "pass")]  # 9 > 8 + 0.5; 0 <= 0 + 0.5


def test_table_is_exact() -> None:
    assert render_table(demo()) == [
        "variant   threshold                              value  limit  verdict",
        "logs-on   post_ok_ratio == 1                     0      1      FAIL",
        "logs-on   latency_p95_s <= 1.2x baseline ±10%    120.4  6.12   FAIL",
        "logs-on   blocked_p95 <= 1x previous (±0.5 abs)  9      -      "
        "SKIP (no earlier run given with --baseline)",
        "logs-on   redeliveries == 0                      -      -      "
        "FAIL (metric redeliveries is missing or not a number)",
        "logs-off  post_ok_ratio == 1                     1      1      PASS",
        "logs-off  latency_p95_s <= 1.2x baseline ±10%    5.1    -      SKIP (this is the baseline variant)",
        "logs-off  blocked_p95 <= 1x previous (±0.5 abs)  0      -      "
        "SKIP (no earlier run given with --baseline)",
        "logs-off  redeliveries == 0                      0      0      PASS",
        "logs-off  edges_max < 5                          1      5      PASS",
        "FAILED: 3 of 9 thresholds failed, 3 skipped",
    ]


def test_junit_has_one_case_per_threshold_and_variant() -> None:
    root = ET.fromstring(render_junit(demo(EARLIER)))
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("9", "4", "1")
    cases = suite.findall("testcase")
    failed = [(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None]
    assert failed == [
        ("contend.gate-demo.logs-on", "post_ok_ratio == 1"),
        ("contend.gate-demo.logs-on", "latency_p95_s <= 1.2x baseline ±10%"),
        ("contend.gate-demo.logs-on", "blocked_p95 <= 1x previous (±0.5 abs)"),
        ("contend.gate-demo.logs-on", "redeliveries == 0"),
    ]
    message = cases[3].find("failure").get("message")  # type: ignore[union-attr]
    assert message == "value -, limit -: metric redeliveries is missing or not a number"


def test_markdown_summary() -> None:
    text = render_markdown(demo())
    lines = text.splitlines()
    assert lines[0] == "### contend gate: gate-demo"
    assert lines[2] == "FAILED: 3 of 9 thresholds failed, 3 skipped"
    assert lines[6] == "| ❌ | logs-on | `post_ok_ratio == 1` | 0 | 1 |  |"
    assert len([line for line in lines if line.startswith("| ")]) == 1 + 9


def test_cli_exit_codes(tmp_path: Path) -> None:
    # thresholds failed: 1, with the table on stdout, JUnit and the step summary written
    junit, step = tmp_path / "junit.xml", tmp_path / "step.md"
    step.write_text("earlier step\n")
    failed = contend("gate", str(DEMO), "--junit", str(junit), env={"GITHUB_STEP_SUMMARY": str(step)})
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout.splitlines() == render_table(demo())
    assert failed.stderr.splitlines()[0] == "Error: 3 of 9 thresholds failed"
    assert ET.parse(junit).getroot().tag == "testsuites"
    assert step.read_text() == "earlier step\n" + render_markdown(demo())

    # every threshold passes: 0
    passing = tmp_path / "passing"
    shutil.copytree(DEMO, passing)
    scenario = (passing / "scenario.yaml").read_text()
    (passing / "scenario.yaml").write_text(scenario.split("thresholds:\n  - post_ok")[0])
    ok = contend("gate", str(passing), "--baseline", str(EARLIER))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1] == "PASSED: 1 of 1 thresholds passed"

    # bad input: 2
    (passing / "summary.json").write_text("{not json")
    broken = contend("gate", str(passing))
    assert broken.returncode == 2
    assert broken.stderr.startswith(f"Error: {passing / 'summary.json'}: not a readable JSON file")
    assert contend("gate", str(tmp_path / "nowhere")).returncode == 2
    (passing / "summary.json").unlink()
    missing = contend("gate", str(passing))
    assert (missing.returncode, missing.stderr.splitlines()[0]) == (
        2, f"Error: {passing / 'summary.json'}: no such file")


def test_cli_baseline_accepts_a_run_folder(tmp_path: Path) -> None:
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    shutil.copy(EARLIER, earlier / "summary.json")
    result = contend("gate", str(DEMO), "--baseline", str(earlier))
    assert result.returncode == 1
    assert "logs-off  blocked_p95 <= 1x previous (±0.5 abs)  0      0      PASS" in result.stdout.splitlines()


def test_relative_and_absolute_allowance_take_the_larger() -> None:
    # "p95 under max(1.3 x previous, previous + 50 ms)", as docs/ci-gating.md writes it
    threshold = parse_threshold("latency_p95_s <= previous", 0.3, 0.05)
    earlier = summary({"base": {"latency_p95_s": 0.01}, "new": {"latency_p95_s": 1.0}})
    verdicts = {p95: evaluate(summary({"base": {"latency_p95_s": p95}, "new": {"latency_p95_s": 1.3}}),
                              [threshold], earlier).checks[0].verdict for p95 in (0.059, 0.061)}
    assert verdicts == {0.059: "pass", 0.061: "fail"}  # 0.01 + 0.05 wins over 1.3 x 0.01
    big = evaluate(summary({"new": {"latency_p95_s": 1.29}}), [threshold], earlier).checks[0]
    assert big.verdict == "pass"  # 1.0 x 1.3 wins over 1.0 + 0.05


def test_the_examples_of_the_gating_guide_are_valid_scenarios() -> None:
    from contend.scenario import parse_scenario

    guide = (ROOT / "docs" / "ci-gating.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", guide, re.S)
    assert len(blocks) == 4
    for block in blocks:
        assert all(parse_scenario(block, "docs/ci-gating.md").thresholds_by_variant().values())


def test_the_example_workflow_runs_the_smoke_scenario_and_gates() -> None:
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "contention-gate.yml").read_text())
    steps = workflow["jobs"]["gate"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "pip install ." in commands
    assert "contend run scenarios/ci-smoke.yaml" in commands
    assert "contend gate" in commands and "--junit" in commands
    upload = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert upload and upload[0]["if"] == "always()"


def test_gate_reads_what_analysis_writes(tmp_path: Path) -> None:
    # The contract between the parts: summary.json as contend.analysis builds it from raw records,
    # thresholds as a scenario states them. The synthetic "logs-on" variant piles up, "logs-off" not.
    import json

    from contend.analysis import load_run, summarize
    from contend.report.synthetic import make_run

    run_dir = make_run(tmp_path, duration_s=20, backends=12)
    (run_dir / "summary.json").write_text(json.dumps(summarize(load_run(run_dir))))
    (run_dir / "scenario.yaml").write_text(
        "name: synthetic\nworkloads:\n  - {kind: batched_post}\n"
        "variants:\n  - name: logs-on\n  - name: logs-off\n"
        "thresholds:\n  - edges_max < 5\n  - {check: edges_max <= 0.5x baseline, variants: [logs-off]}\n")
    result = gate_run(run_dir)
    verdicts = [(c.variant, str(c.threshold), c.verdict) for c in result.checks]
    assert verdicts == [("logs-on", "edges_max < 5", "fail"),
                        ("logs-off", "edges_max < 5", "pass"),
                        ("logs-off", "edges_max <= 0.5x baseline", "pass")]
    summary_json = json.loads((run_dir / "summary.json").read_text())
    on = summary_json["variants"]["logs-on"]["metrics"]["edges_max"]
    assert result.checks[0].value == on and on >= 5


def test_a_threshold_at_95_percent_is_checked_on_the_far_end_of_the_bootstrap_interval() -> None:
    # new's median p95 (5.9 s) is within 1.2x base (6.0 s), but its interval reaches +1.5 s: 6.5 s.
    run = summary({"base": {"latency_p95_s": 5.0, "results_accepted_per_s": 100.0},
                   "new": {"latency_p95_s": 5.9, "results_accepted_per_s": 95.0}})
    run["variants"]["new"]["deltas"] = {"latency_p95_s": {"abs": 0.9, "ci": [0.2, 1.5]},
                                        "results_accepted_per_s": {"abs": -5.0, "ci": [-8.0, -1.0]}}
    plain, interval = (parse_threshold(f"latency_p95_s <= 1.2x baseline{s}") for s in ("", " at 95%"))
    assert str(interval) == "latency_p95_s <= 1.2x baseline at 95%"
    rate = parse_threshold("results_accepted_per_s >= 0.9x baseline at 95%")
    result = evaluate(run, [plain, interval, rate])
    verdicts = [(c.verdict, c.value) for c in result.checks if c.variant == "new"]
    assert verdicts == [("pass", 5.9), ("fail", 6.5), ("pass", 92.0)]  # lower end 100 - 8 = 92 >= 90
    # Without repetitions there is no interval to check: the threshold fails and says why.
    del run["variants"]["new"]["deltas"]
    (check,) = [c for c in evaluate(run, [interval]).checks if c.variant == "new"]
    assert check.verdict == "fail" and "3 or more repetitions" in (check.reason or "")
    with pytest.raises(ValueError, match="at 95%"):
        parse_threshold("edges_max < 5 at 95%")


def test_apply_gate_writes_junit_and_appends_the_step_summary(tmp_path: Path) -> None:
    from contend.errors import ThresholdsFailed
    from contend.gate import apply_gate, raise_if_failed

    junit, step = tmp_path / "junit.xml", tmp_path / "step.md"
    step.write_text("earlier step\n")
    result = apply_gate(DEMO, junit=junit, step_summary=step)
    assert result == demo()
    assert junit.read_text() == render_junit(result)
    assert step.read_text() == "earlier step\n" + render_markdown(result)
    with pytest.raises(ThresholdsFailed, match=r"^3 of 9 thresholds failed$"):
        raise_if_failed(result)
    raise_if_failed(GateResult(scenario="none"))  # nothing failed: no error


def test_fail_fast_stops_after_the_first_variant_that_fails_its_thresholds(tmp_path: Path) -> None:
    from contend.report.synthetic import make_run
    from contend.run import VariantOutcome, stop_after_failing_variant

    run_dir = make_run(tmp_path, duration_s=2.0, hz=2.0, backends=4, with_backends=False)
    (run_dir / "scenario.yaml").write_text(
        "name: synthetic\nworkloads: [{kind: batched_post}]\n"
        "variants: [{name: logs-on}, {name: logs-off, baseline: true}]\n"
        "thresholds:\n  - {check: 'edges_max < 0', variants: [logs-on]}\n"
        "  - {check: 'edges_max >= 0', variants: [logs-off]}\n")
    passes = stop_after_failing_variant()
    assert passes(run_dir, VariantOutcome("logs-off", run_dir / "variants" / "logs-off")) is True
    assert passes(run_dir, VariantOutcome("logs-on", run_dir / "variants" / "logs-on")) is False
    assert (run_dir / "report.html").exists()  # written before the gate read the summary
