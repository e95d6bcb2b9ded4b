"""The Findings section: computed from the wait-for graph records and the ticks, under the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contend.analysis import load_run, summarize
from contend.report.html import render_html
from contend.report.markdown import render_markdown
from contend.report.synthetic import SynthVariant, make_run


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
    assert convoy["short"] in on["findings_text"][1]
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
    assert '<code>UPDATE &#34;jobs_job&#34;' in page[findings:]  # database text is escaped
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
    assert f"of {total:.0f} blocked-seconds" in dominant["text"]
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


WORDS = 36
"""About 30 words: the issue's own example of a deadlock's sentence has 33."""


def test_each_finding_is_one_short_sentence_that_says_what_and_where(run_dir: Path) -> None:
    summary = summarize(load_run(run_dir))
    on = summary["variants"]["logs-on"]
    deadlock = on["findings_text"][0]
    assert deadlock == ("Cross-layer deadlock, seen once from 30.0 s: `job_result` holds a row of jobs_job "
                        "and waits for JobLogHandler's lock; `_cachalot` holds that lock and waits for the "
                        "row. Only statement_timeout (30 s) ends it.")
    for name, entry in summary["variants"].items():
        comparison = 1 if name != summary["baseline"] else 0
        for sentence in entry["findings_text"][:len(entry["findings_text"]) - comparison]:
            assert len(sentence.split()) <= WORDS, sentence


def test_the_report_draws_the_worst_cycle_beside_its_words_and_thread_table(run_dir: Path) -> None:
    run = load_run(run_dir)
    summary = summarize(run)
    page = render_html(run, summary, run_dir)
    findings = page[page.index('<h2 id="findings">'):page.index('<h2 id="v1">')]
    figure = findings[findings.index('<figure class="waitgraph"><svg'):findings.index("</figure>")]
    # Inline SVG with its text kept as text: both functions, the thing each waits for, the timeout.
    for words in ("job_result", "_cachalot", "JobLogHandler&#39;s lock", "a row of jobs_job", "waits for",
                  "held by", "Only statement_timeout (30 s) ends it, on backend 1001."):
        assert words in figure or words.replace("&#39;", "'") in figure, words
    assert "<script" not in page and 'href="http' not in findings and "src=\"http" not in findings
    assert findings.count("<svg") == 1  # the worst instance of one variant, not every moment
    # the sentence beside it, then its threads' table
    after = findings[findings.index("</figure>"):]
    sentence = after.index("<code>job_result</code> holds a row of jobs_job")
    assert sentence < after.index('<table class="threads">')
    assert "<td class=\"label\"><code>_cachalot</code></td><td class=\"label\">apps.py:58</td>" in after


def test_report_md_says_the_same_without_html_escapes(run_dir: Path) -> None:
    summary = summarize(load_run(run_dir))
    on = summary["variants"]["logs-on"]
    on["findings_text"][0] = on["findings_text"][0].replace("`job_result`", "`job.<locals>.emit`") + " <b>"
    markdown = render_markdown(summary, {})
    assert f"  - {on['findings_text'][1]}" in markdown.splitlines()
    assert "`job.<locals>.emit` holds a row of jobs_job" in markdown and "ends it. \\<b>" in markdown
    assert "&lt;" not in markdown


def test_the_header_says_how_soon_each_kind_was_first_found(run_dir: Path) -> None:
    run = load_run(run_dir)
    summary = summarize(run)
    first = summary["variants"]["logs-on"]["first_finding_s"]
    records = [json.loads(line) for line in (run_dir / "variants" / "logs-on" / "samples" /
                                             "waitgraph.jsonl").read_text().splitlines()]
    load_start = float(run.variants["logs-on"][0].requests["t0"].min())
    deadlock_at = min(r["t"] for r in records
                      if any(f["kind"] == "cross_layer_deadlock" for f in r["findings"]))
    assert first["cross_layer_deadlock"] == pytest.approx(deadlock_at - load_start, abs=0.5)
    page = render_html(run, summary, run_dir)
    header = page[:page.index("<h2>Verdict</h2>")]
    assert (f"Time to the first finding, from the load&#39;s start: logs-on: cross-layer deadlock "
            f"{first['cross_layer_deadlock']:.1f} s, Python lock convoy {first['python_lock_convoy']:.1f} s."
            ) in header


def test_a_stopped_variant_says_where_it_stopped(tmp_path: Path) -> None:
    reason = "stopped at 2.5 s: edges_max 4 >= 3"
    run_dir = make_run(tmp_path, (SynthVariant("logs-off", contention=0.05),
                                  SynthVariant("logs-on", contention=0.9, status="stopped", reason=reason)),
                       duration_s=20, backends=10, with_backends=False)
    run = load_run(run_dir)
    summary = summarize(run)
    assert summary["variants"]["logs-on"]["status"] == "stopped"
    assert f"<b>logs-on</b>: {reason.replace('>', '&gt;')}</div>" in render_html(run, summary, run_dir)
    assert f"- **logs-on** {reason}" in render_markdown(summary, {}).splitlines()


def test_a_timeout_no_session_can_read_is_told_by_the_waits_it_ends() -> None:
    # Antenna sets statement_timeout on its own sessions: invisible to the sampler, but every lock
    # wait it cancels ends after the same time, and Postgres logs each one.
    from types import SimpleNamespace

    from contend.analysis.findings import timeout_evidence
    from contend.analysis.waits import Wait
    from contend.pglog import ServerEvent, ServerLog

    def wait(pid: int, start: float, length: float) -> Wait:
        return Wait(pid, 1e9 + start, start, start + length, start + length + 0.1)

    waits = [wait(1, 0.0, 29.9), wait(2, 1.0, 30.0), wait(3, 2.0, 29.95), wait(4, 3.0, 0.2),
             wait(5, 4.0, 3.0)]
    cancel = "canceling statement due to statement timeout"
    log = ServerLog(waits=[], events=[ServerEvent(30.0, 1, "statement_timeout", cancel),
                                      ServerEvent(31.0, 2, "statement_timeout", cancel)])
    run = SimpleNamespace(waits=waits, server_log=log)
    assert timeout_evidence(run) == ("3 of its 4 longer lock waits ended after 29.9-30.0 s, consistent with "
                                     "a statement_timeout or lock_timeout of about 30 s; Postgres logged 2 "
                                     "statement timeouts.")
    scattered = SimpleNamespace(waits=[wait(1, 0, 2.0), wait(2, 0, 9.0), wait(3, 0, 17.0)], server_log=None)
    assert timeout_evidence(scattered) is None
