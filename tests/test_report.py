"""The written report: self-contained HTML, escaping, partial runs, `contend report` and `contend compare`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from contend.report import write_comparison, write_report
from contend.report.synthetic import SynthVariant, make_run
from tests.conftest import contend

EVIL = "UPDATE jobs_job SET logs = '<script>alert(1)</script>' WHERE id = 1"


def raw_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = make_run(
        tmp_path_factory.mktemp("rep"), duration_s=30, backends=10, with_backends=False, query_text=EVIL
    )
    speedscope = run / "variants" / "logs-on" / "samples" / "pyspy-record-web-41.speedscope.json"
    speedscope.write_text("{}")
    write_report(run)
    return run


def test_html_is_one_self_contained_file(run_dir):
    html = (run_dir / "report.html").read_text()
    # Nothing fetched from elsewhere: no scripts at all, no external stylesheet, font or image.
    assert "<script" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    images = re.findall(r'<img src="([^"]+)"', html)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    # One timeline per variant, plus the latency distribution of all variants.
    assert len(images) == 3


def test_database_text_is_escaped(run_dir):
    html = (run_dir / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html or "&lt;script&gt;" in html
    assert "<script>alert(1)" not in html
    md = (run_dir / "report.md").read_text()
    assert "<script>" not in md


def test_html_verdict_shows_the_raw_numbers(run_dir):
    html = (run_dir / "report.html").read_text()
    for name in ("logs-on", "logs-off"):
        posts = [
            r
            for r in raw_lines(run_dir / "variants" / name / "load" / "requests-w0.jsonl")
            if r["kind"] == "result"
        ]
        ok = sum(1 for r in posts if r["error"] is None)
        assert f"{ok} / {len(posts)}" in html
    ticks = raw_lines(run_dir / "variants" / "logs-on" / "samples" / "pg_ticks.jsonl")
    top = max(ticks, key=lambda t: t["edges"])
    assert f">{top['edges']}<" in html  # the edges max cell of the baseline
    assert "held by web process 41 thread 7" in html  # the attribution of the top root blocker
    assert "psycopg wait &lt;- emit" in html  # the py-spy summary sentence, escaped
    assert 'href="variants/logs-on/samples/pyspy-record-web-41.speedscope.json"' in html
    assert "2026-01-01 00:00:00 UTC" in html  # the run meta's ISO start time
    assert "synthetic run for tests" in html  # the description


def test_summary_json_on_disk_is_the_documented_shape(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) == {"scenario", "status", "baseline", "variants"}
    for entry in summary["variants"].values():
        assert {"status", "reason", "flags", "params", "repetitions", "metrics", "deltas"} <= set(entry)


def test_markdown_has_the_verdict_table(run_dir):
    md = (run_dir / "report.md").read_text()
    assert md.startswith("## contend: synthetic (complete)")
    assert "| metric | logs-on (baseline) | logs-off |" in md
    assert "| edges (blocker chain) max |" in md
    assert len(md) < 4000


def test_partial_run_renders_and_says_so(run_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    for name in ("report.html", "report.md", "summary.json"):
        (partial / name).unlink()
    meta = json.loads((partial / "meta.json").read_text())
    (partial / "meta.json").write_text(json.dumps(meta | {"status": "partial", "ended": None}))
    vmeta = partial / "variants" / "logs-off" / "meta.json"
    vmeta.write_text(
        json.dumps(json.loads(vmeta.read_text()) | {"status": "failed", "reason": "web process died"})
    )
    reqs = partial / "variants" / "logs-off" / "load" / "requests-w0.jsonl"
    reqs.write_text(reqs.read_text()[:-40])  # killed mid-line
    (partial / "variants" / "logs-off" / "samples" / "pg_ticks.jsonl").unlink()

    paths = write_report(partial)
    html = paths.html.read_text()
    assert "This run is <b>partial</b>" in html
    assert "web process died" in html
    assert "skipped 1 unreadable line" in html
    assert json.loads(paths.summary.read_text())["variants"]["logs-off"]["status"] == "failed"


def test_contend_report_rerenders_from_raw_records(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for name in ("report.html", "report.md", "summary.json"):
        (copy / name).unlink()
    done = contend("report", str(copy), "--json")
    assert done.returncode == 0, done.stderr
    paths = json.loads(done.stdout)
    assert Path(paths["html"]) == copy / "report.html" and (copy / "report.html").exists()
    assert json.loads((copy / "summary.json").read_text()) == json.loads(
        (run_dir / "summary.json").read_text()
    )


def test_contend_report_on_a_folder_without_records_is_a_config_error(tmp_path):
    done = contend("report", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith("Error: ") and "Hint: " in done.stderr


def test_contend_compare_puts_b_against_a_baseline(tmp_path):
    before = make_run(tmp_path / "a", duration_s=20, backends=8, with_backends=False, scenario="before")
    after = make_run(
        tmp_path / "b",
        (SynthVariant("logs-on", contention=0.1, params={"concurrency": 10}),),
        duration_s=20,
        backends=8,
        with_backends=False,
        scenario="after",
        seed=2,
    )
    out = tmp_path / "cmp"
    done = contend("compare", str(before), str(after), "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == "A: logs-on"
    assert list(summary["variants"]) == ["A: logs-on", "A: logs-off", "B: logs-on"]
    b = summary["variants"]["B: logs-on"]
    a_metrics = summary["variants"]["A: logs-on"]["metrics"]
    ticks = raw_lines(after / "variants" / "logs-on" / "samples" / "pg_ticks.jsonl")
    reqs = raw_lines(after / "variants" / "logs-on" / "load" / "requests-w0.jsonl")
    window = [t for t in ticks if min(r["t0"] for r in reqs) <= t["t"] <= max(r["t1"] for r in reqs)]
    assert b["metrics"]["edges_max"] == max(t["edges"] for t in window)
    assert b["deltas"]["edges_max"]["abs"] == b["metrics"]["edges_max"] - a_metrics["edges_max"]
    html = (out / "report.html").read_text()
    assert "before (A) vs after (B)" in html and str(before) in html


def test_compare_library_call_writes_where_asked(run_dir, tmp_path):
    paths = write_comparison(run_dir, run_dir, tmp_path / "out")
    assert paths.html.parent == tmp_path / "out" and paths.markdown.exists()
    # Links to another folder's files stay valid from the comparison's folder.
    assert "../" in paths.html.read_text().split("speedscope.json")[0].rsplit('href="', 1)[1]


def test_sweep_plot_only_when_the_run_sweeps(tmp_path):
    variants = tuple(
        SynthVariant(
            f"logs={flag},concurrency={c}",
            {"JOB_LOG_PERSIST_ENABLED": flag},
            {"concurrency": c},
            contention=(0.2 * c if flag == "true" else 0.02),
        )
        for flag in ("true", "false")
        for c in (1, 2, 4)
    )
    swept = make_run(
        tmp_path / "s", variants, duration_s=10, backends=6, with_backends=False, sweep="concurrency"
    )
    html = write_report(swept).html.read_text()
    assert "Scaling with concurrency" in html
    assert html.count('alt="sweep"') == 1
    summary = json.loads((swept / "summary.json").read_text())
    assert summary["sweep"] == "concurrency"
    assert sorted(e["params"]["concurrency"] for e in summary["variants"].values()) == [1, 1, 2, 2, 4, 4]
    plain = make_run(tmp_path / "p", variants[:2], duration_s=10, backends=6, with_backends=False)
    assert 'alt="sweep"' not in write_report(plain).html.read_text()
    # A "sweep" over a parameter every variant shares has no curve to draw.
    flat = make_run(
        tmp_path / "f",
        (variants[0], variants[3]),
        duration_s=10,
        backends=6,
        with_backends=False,
        sweep="concurrency",
    )
    assert 'alt="sweep"' not in write_report(flat).html.read_text()


def test_image_rows_join_the_verdict_table_when_the_pull_workers_loaded_images(run_dir):
    from contend.report.tables import IMAGE_ROWS, verdict_rows

    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(IMAGE_ROWS) <= set(verdict_rows(summary))
    metrics = next(iter(summary["variants"].values()))["metrics"]
    assert metrics["image_loads"] > 0 and metrics["image_load_failed"] == 0
    assert 0.03 <= metrics["image_load_p50_s"] <= metrics["image_load_p95_s"] <= 0.1
    md = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    assert "| image download p95 (s) |" in md and "image download p95 (s)" in html
    assert "| images loaded (MB) |" in md
    for entry in summary["variants"].values():
        entry["metrics"]["image_loads"] = None  # a run without image records: no image rows
    assert not set(IMAGE_ROWS) & set(verdict_rows(summary))


def test_fairness_rows_follow_the_seeds_rows_only_with_several_jobs(run_dir, tmp_path):
    from contend.report.markdown import render_markdown
    from contend.report.tables import VERDICT_ROWS, verdict_rows

    summary = json.loads((run_dir / "summary.json").read_text())
    for entry in summary["variants"].values():  # server errors and the wait-for graph's counts have
        entry["metrics"].update(http_5xx=0, cross_layer_deadlocks=0,  # rows of their own (tests below,
                                python_lock_waiters_max=0, idle_in_tx_blocked_in_app_max=0,  # findings)
                                image_loads=None)  # the synthetic pull workers load images: rows below
    # The synthetic run has one job: the table keeps the seed's shape.
    assert verdict_rows(summary) == VERDICT_ROWS
    assert "starved jobs" not in (run_dir / "report.md").read_text()
    for entry, starved in zip(summary["variants"].values(), (4, 0), strict=True):
        entry["metrics"].update(jobs_started=6 - starved, starved_jobs=starved, first_result_s_p50=3.5,
                                first_result_s_max=50.0 if starved else 9.25)
    extra = verdict_rows(summary)[len(VERDICT_ROWS):]
    assert verdict_rows(summary)[: len(VERDICT_ROWS)] == VERDICT_ROWS
    assert [metric for metric, _ in extra] == ["starved_jobs", "first_result_s_p50", "first_result_s_max"]
    for entry in summary["variants"].values():
        entry["deltas"] = {}  # the deltas were computed before the values above were set
    md = render_markdown(summary, {})
    assert "| starved jobs (no result) | 4 | 0 |" in md
    assert "| first result max (s) | 50 | 9.25 |" in md
    assert "lost count updates" not in md
    # Lost count updates join the table once a variant lost some.
    for entry, lost in zip(summary["variants"].values(), (0, 12), strict=True):
        entry["metrics"]["lost_updates"] = lost
    assert verdict_rows(summary)[-1][0] == "lost_updates"
    assert "| lost count updates | 0 | 12 |" in render_markdown(summary, {})
    # What Postgres logged joins it once a variant has some: here one deadlock and two 5xx.
    for entry, deadlocks in zip(summary["variants"].values(), (0, 1), strict=True):
        entry["metrics"].update(pg_deadlocks=deadlocks, http_5xx=2 * deadlocks)
    assert verdict_rows(summary)[-5][0] == "pg_deadlocks"
    md = render_markdown(summary, {})
    assert "| Postgres: deadlock detected | 0 | 1 |" in md and "| server errors (HTTP 5xx) | 0 | 2 |" in md
    # A drain that hit drain_timeout_s says so next to its length.
    for entry, cut in zip(summary["variants"].values(), (0, 1), strict=True):
        entry["metrics"].update(drain_s=30.5 if cut else 12.0, drain_timed_out=cut)
    assert "| drain after the last POST (s) | 12 | 30.5 (timed out) |" in render_markdown(summary, {})


def test_fewer_distinct_lock_waits_is_not_coloured_better() -> None:
    # One 30 s wait ended by a timeout is fewer waits than a hundred of 10 ms, and no improvement:
    # the count is neutral, blocked seconds carry the direction.
    from contend.report.tables import _tone

    assert _tone("lock_waits", -101, None) == ""
    assert _tone("lock_waits_drain", 5, None) == ""
    assert _tone("blocked_seconds", 480, None) == "worse"
