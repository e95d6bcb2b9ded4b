"""The Findings section: computed from the wait-for graph records and the ticks, under the verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from contend.analysis import load_run, summarize
from contend.report.html import render_html
from contend.report.markdown import render_markdown
from contend.report.synthetic import make_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("findings"), duration_s=40, backends=10, with_backends=False)


def test_findings_follow_the_records_most_important_first(run_dir: Path) -> None:
    summary = summarize(load_run(run_dir))
    on, off = summary["variants"]["logs-on"], summary["variants"]["logs-off"]
    kinds = [f["kind"] for f in on["findings"]]
    assert kinds == sorted(kinds, key=["cross_layer_deadlock", "python_lock_convoy",
                                       "idle_in_tx_waiting_on_app", "dominant_root_blocker"].index)
    convoy = next(f for f in on["findings"] if f["kind"] == "python_lock_convoy")
    assert convoy["size_max"] == on["metrics"]["python_lock_waiters_max"]
    assert convoy["text"] in on["findings_text"][1]
    assert 1 <= len(on["findings_text"]) <= 5 and 1 <= len(off["findings_text"]) <= 6
    assert on["findings_text"][-1].startswith("The dominant root blocker")
    assert off["findings_text"][0].startswith("No cross-layer cycle")
    # the comparison sentence, from both variants' records
    assert off["findings_text"][-1].startswith("logs-off removed")
    assert "the Python lock convoy seen in" in off["findings_text"][-1]


def test_findings_section_sits_under_the_verdict_escaped(run_dir: Path) -> None:
    run = load_run(run_dir)
    summary = summarize(run)
    page = render_html(run, summary, run_dir)
    verdict, findings = page.index("<h2>Verdict</h2>"), page.index('<h2 id="findings">Findings</h2>')
    assert verdict < findings < page.index('<h2 id="v1">')
    assert '`UPDATE &#34;jobs_job&#34;' in page[findings:]  # database text is escaped
    assert "py-spy dumps with locals for them" in page
    markdown = render_markdown(summary, {})
    assert markdown.index("**Findings**") > markdown.index("| metric")


def test_the_verdict_shows_the_graph_counts_when_a_variant_has_any(run_dir: Path) -> None:
    from contend.report.tables import verdict_rows

    summary = summarize(load_run(run_dir))
    assert ("cross_layer_deadlocks", "cross-layer deadlocks (Python + Postgres)") in verdict_rows(summary)
    for entry in summary["variants"].values():
        entry["metrics"].update(dict.fromkeys(
            ("cross_layer_deadlocks", "python_lock_waiters_max", "idle_in_tx_blocked_in_app_max"), 0))
    assert all(metric != "cross_layer_deadlocks" for metric, _ in verdict_rows(summary))


def test_blocked_seconds_is_one_figure_wherever_it_is_shown(run_dir: Path) -> None:
    # The table's metric, the dominant root blocker's total, the root-blocker lines and the comparison
    # sentence all show the same blocked-seconds.
    from contend.analysis import top_blockers

    run = load_run(run_dir)
    summary = summarize(run)
    on = summary["variants"]["logs-on"]
    total = on["metrics"]["blocked_seconds"]
    assert total > 10
    dominant = next(f for f in on["findings"] if f["kind"] == "dominant_root_blocker")
    assert dominant["blocked_s"] / dominant["share"] == pytest.approx(total, rel=1e-3)
    assert f"of the {total:.0f} blocked-seconds" in dominant["text"]
    statements = top_blockers(run.variants["logs-on"][0], limit=100)
    assert sum(b.blocked_s for b in statements) == pytest.approx(total)
    assert statements[0].blocked_s == pytest.approx(dominant["blocked_s"], abs=1e-3)
    off_total = summary["variants"]["logs-off"]["metrics"]["blocked_seconds"]
    assert f"({total:.0f} → {off_total:.0f})" in summary["variants"]["logs-off"]["findings_text"][-1]
    md = render_markdown(summary, {"logs-on": statements[0], "logs-off": None})
    assert f"{statements[0].blocked_s:.0f} blocked-s" in md


def test_a_failed_variant_has_no_figures_anywhere(run_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    failed = tmp_path / "failed"
    shutil.copytree(run_dir, failed)
    vmeta = failed / "variants" / "logs-on" / "meta.json"  # the baseline
    vmeta.write_text(json.dumps(json.loads(vmeta.read_text()) | {"status": "failed",
                                                                   "reason": "the stack did not start"}))
    summary = summarize(load_run(failed))
    on, off = summary["variants"]["logs-on"], summary["variants"]["logs-off"]
    assert on["status"] == "failed" and set(on["metrics"].values()) == {None}
    assert on["findings"] == [] and on["deltas"] == {} and off["deltas"] == {}
    assert on["findings_text"] == ["This variant failed (the stack did not start): it has no figures and "
                                   "no findings."]
    assert "removed" not in " ".join(off["findings_text"])
    assert off["findings_text"][-1] == "The baseline logs-on failed, so nothing is compared with it."
    md = render_markdown(summary, {"logs-on": None, "logs-off": None})
    assert "`logs-on` (" in md and "failed, no figures" in md
