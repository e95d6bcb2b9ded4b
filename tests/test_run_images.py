"""`contend run` with ADC-like pull workers that load each task's image: records, summary and report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CONTEND
from tests.test_run import _no_contend_children, _p95, _records, _scenario

pytestmark = pytest.mark.slow

IMAGES = """\
name: images
target: {preset: pr-1261-logs-off, web_concurrency: 1, worker_concurrency: 2, images_per_job: 30}
workloads:
  - {kind: pull_workers, pollers: 2, loaders: 2, batch_size: 4, prefetch: 2, per_image_s: 0.01,
     cold_start_s: 0.1, idle_sleep_s: 1, duration_s: 10, load_images: true}
warm_up_s: 0
cool_down_s: 0.5
drain_timeout_s: 60
variants:
  - {name: adc}
"""


def test_pull_workers_loading_images_show_each_tasks_image_time_in_the_records_and_the_report(tmp_path: Path):
    reports = tmp_path / "reports"
    out = subprocess.run([*CONTEND, "run", str(_scenario(tmp_path, IMAGES)), "--reports", str(reports),
                          "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    records = _records(run_dir / "variants" / "adc")
    images = [r for r in records if r["kind"] == "image"]
    received = sum(int(r["tasks"]) for r in records if r["kind"] == "tasks")  # type: ignore[call-overload]
    assert received > 0 and len(images) == received  # one download per task
    assert all(r["status"] == 200 and r["error"] is None and int(r["recv"]) > 100_000  # type: ignore[call-overload]
               for r in images)
    metrics = json.loads((run_dir / "summary.json").read_text())["variants"]["adc"]["metrics"]
    seconds = [float(r["t1"]) - float(r["t0"]) for r in images]  # type: ignore[arg-type]
    assert metrics["image_loads"] == len(images) and metrics["image_load_failed"] == 0
    assert metrics["image_load_p95_s"] == pytest.approx(_p95(seconds), rel=1e-3, abs=1e-4)
    assert metrics["image_mb"] == pytest.approx(sum(int(r["recv"]) for r in images) / 1e6)  # type: ignore[call-overload]
    report = (run_dir / "report.md").read_text()
    assert "| image download p95 (s) |" in report and "| task images loaded |" in report
    assert "image download p95 (s)" in (run_dir / "report.html").read_text()
    assert _no_contend_children(run_dir)
