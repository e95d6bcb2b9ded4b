"""Your own load against the reference server: a locustfile workload, standalone and distributed.

The locustfile (tests/data/load/two_classes.py) has two user classes and three request names, one
of which always answers 404. The run folder's request records must match locust's own statistics
exactly; the report shows the names' latency; a threshold on one name passes, one on another fails.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contend.gate import gate_run
from contend.load import LoadTarget, read_records, run_load
from contend.load.config import Locustfile
from contend.run import run_scenario
from contend.scenario import parse_scenario
from contend.stack import RefServerOptions, Stack

pytestmark = pytest.mark.slow  # a reference server stack

LOCUSTFILE = Path(__file__).parent / "data" / "load" / "two_classes.py"
SCENARIO = f"""\
name: own-load
target:
  kind: external
  base_url: "{{url}}"
  token_env: OWN_LOAD_TOKEN
  dsn_env: OWN_LOAD_DSN
workloads:
  - {{{{kind: locustfile, path: {LOCUSTFILE}, users: 4, iterations: 6}}}}
warm_up_s: 0
drain_wait_s: 0
cool_down_s: 0
sampling: {{{{pyspy: false, nats: false}}}}
thresholds:
  - 'latency_p95_s{{{{name="jobs"}}}} < 60'
  - 'latency_p95_s{{{{name="job"}}}} < 0.000001'
"""


@pytest.fixture(scope="module")
def refserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], str]]:
    options = RefServerOptions(preset="pr-1261-logs-off", jobs=1, images_per_job=10)
    with Stack(tmp_path_factory.mktemp("stack"), refserver=options) as stack:
        yield stack.info()["refserver"], stack.dsn


def _per_name(records: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int]]:
    count = Counter((r["method"], r["name"]) for r in records)
    failed = Counter((r["method"], r["name"]) for r in records if r["error"] is not None)
    return {key: (n, failed[key]) for key, n in count.items()}


def test_a_locustfile_run_matches_locusts_statistics_and_gates_per_name(
        refserver: tuple[dict[str, Any], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, dsn = refserver
    monkeypatch.setenv("OWN_LOAD_TOKEN", ref["token"])
    monkeypatch.setenv("OWN_LOAD_DSN", dsn)
    result = run_scenario(parse_scenario(SCENARIO.format(url=ref["url"])), tmp_path / "reports")
    variant = result.run_dir / "variants" / "default"
    assert json.loads((variant / "meta.json").read_text())["status"] == "ok"
    records = list(read_records(variant / "load"))
    assert len(records) == 4 * 6, "one record per task run: each task sends one request"
    stats = json.loads((variant / "load" / "locust-stats.json").read_text())
    assert _per_name(records) == {(s["method"], s["name"]): (s["num_requests"], s["num_failures"])
                                  for s in stats}
    assert {r["name"] for r in records} <= {"jobs", "job", "missing"}
    assert all(r["status"] == 404 and r["error"] == "HTTP 404" for r in records if r["name"] == "missing")
    assert all(r["error"] is None for r in records if r["name"] != "missing")
    assert all(r["t0"] <= r["t1"] for r in records)

    summary = json.loads((result.run_dir / "summary.json").read_text())
    entry = summary["variants"]["default"]
    by_name = {row["name"]: row for row in entry["requests_by_name"]}
    for (_, name), (n, failed) in _per_name(records).items():
        assert by_name[name]["requests_total"] == n and by_name[name]["requests_failed"] == failed
        assert entry["metrics"][f'latency_p95_s{{name="{name}"}}'] is not None
    markdown = (result.run_dir / "report.md").read_text()
    html = (result.run_dir / "report.html").read_text()
    assert "Requests by name" in markdown and "Requests by name" in html
    for name in by_name:
        assert f"| {name} |" in markdown and f'<td class="label">{name}</td>' in html

    verdicts = {str(c.threshold): c.verdict for c in gate_run(result.run_dir).checks}
    assert verdicts == {'latency_p95_s{name="jobs"} < 60': "pass",
                        'latency_p95_s{name="job"} < 1e-06': "fail"}


def test_a_distributed_locustfile_run_sends_the_planned_requests(
        refserver: tuple[dict[str, Any], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, _ = refserver
    monkeypatch.setenv("OWN_LOAD_TOKEN", ref["token"])
    target = LoadTarget(base_url=ref["url"], token_env="OWN_LOAD_TOKEN", job_ids=tuple(ref["job_ids"]))
    workload = Locustfile(kind="locustfile", path=str(LOCUSTFILE), users=6, iterations=5, spawn_rate=20)
    summary = run_load([workload], target, tmp_path, load_workers=2)
    records = list(read_records(tmp_path))
    assert summary.status == "ok"
    assert len(records) == 6 * 5, "the plan: users x iterations, one request per task run"
    assert {p.name for p in tmp_path.glob("requests-*.jsonl")} == {"requests-w0.jsonl", "requests-w1.jsonl"}
    assert all(r["error"] is None for r in records if r["name"] != "missing"), "the token and job ids came"
