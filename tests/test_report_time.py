"""The report header's time breakdown: each phase summed over the variant runs, then the report."""

from __future__ import annotations

import json
from pathlib import Path

from contend.analysis import load_run
from contend.report.html import time_breakdown
from contend.report.synthetic import make_run


def test_time_breakdown_sums_each_phase_over_the_variants(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, duration_s=5.0, backends=4)
    metas = sorted(run_dir.glob("variants/*/meta.json"))
    assert len(metas) == 2
    for n, path in enumerate(metas):
        meta = json.loads(path.read_text())
        meta["phase_s"] = {"stack_up": 4.0 + n, "warm_up": 3.0, "load": 10.0 * (n + 1), "drain": 2.5,
                           "stack_down": 0.5}
        path.write_text(json.dumps(meta))
    run_meta = json.loads((run_dir / "meta.json").read_text())
    run_meta.update(started="2026-01-01T00:00:00+00:00", ended="2026-01-01T00:01:10+00:00", report_s=1.25)
    (run_dir / "meta.json").write_text(json.dumps(run_meta))
    assert time_breakdown(load_run(run_dir)) == (
        "Where the time went (2 variant runs, 70 s to the last variant's end): stack up 9.0 s, "
        "warm-up 6.0 s, load 30.0 s, drain 5.0 s, stack down 1.0 s; report 1.2 s; other 19 s.")


def test_no_breakdown_for_a_run_from_before_phases_were_timed(tmp_path: Path) -> None:
    assert time_breakdown(load_run(make_run(tmp_path, duration_s=5.0, backends=4))) == ""
