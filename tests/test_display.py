"""The live view's progress bar, time left and queued results (rendering is pure; no terminal needed)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from contend.display import Planned, RunDisplay, bar, planned, progress_line, results_queued, time_left
from contend.load import LoadProgress
from contend.load.config import BatchedPost, PullWorkers


def progress(ok: int, failed: int = 0, elapsed: float = 10.0) -> LoadProgress:
    return LoadProgress(state="running", elapsed_s=elapsed, requests_ok=ok, requests_failed=failed,
                        in_flight=3, p95_s=1.5, results=ok * 50)


def test_planned_counts_posts_of_rounds_and_seconds_of_durations() -> None:
    assert planned([BatchedPost(batch=50, concurrency=10, rounds=2)]) == Planned(posts=20, load_s=None)
    assert planned([BatchedPost(duration_s=30), PullWorkers(duration_s=45)]) == Planned(None, 45.0)


def test_progress_line_shows_posts_done_of_the_planned_total() -> None:
    assert progress_line(Planned(20, None), progress(9, 3)) == f"POSTs 12 of 20 {bar(0.6)}  60%"
    timed = progress_line(Planned(None, 40.0), progress(5, elapsed=10.0))
    assert timed == f"load 10 s of 40 s {bar(0.25)}  25%"
    assert progress_line(None, progress(5)) == "" and progress_line(Planned(20, None), None) == ""
    assert bar(0.5, width=4) == "██░░" and bar(1.7, width=2) == "██"


def test_time_left_from_finished_variants_else_from_the_loads_progress() -> None:
    # Two of four variants took 60 s and 80 s; the third has run 30 s: 40 s for it, 70 s for the last.
    assert time_left([60.0, 80.0], 3, 4, 30.0, None, None) == 110.0
    # First variant: 20 s before its load, half the load done after 15 s of load: 50 s per variant.
    assert time_left([], 1, 2, 35.0, 0.5, 20.0) == 15.0 + 50.0
    assert time_left([], 1, 2, 10.0, None, None) is None


def test_results_queued_reads_the_newest_nats_sample(tmp_path: Path) -> None:
    records = [{"t": 1.0, "stream": "ml_results", "consumer": "c", "num_pending": 40},
               {"t": 2.0, "stream": "ml_results", "consumer": "c", "num_pending": 7},
               {"t": 2.0, "stream": "job_1", "consumer": "j", "num_pending": 99}]
    (tmp_path / "nats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"t": 3.0, "str')
    assert results_queued(tmp_path) == 7
    assert results_queued(tmp_path / "missing") is None


def test_display_prints_one_line_per_event_off_a_terminal(tmp_path: Path) -> None:
    out = io.StringIO()
    display = RunDisplay(Console(file=out, force_terminal=False, width=120), plans={"a": Planned(20, None)})
    with display:
        display.variant_started(1, 2, "a")
        display.phase("load")
        display.load_progress(progress(10), tmp_path)
        table = display._table()
        display.variant_finished("a", "ok", None)
    console = Console(file=io.StringIO(), width=160)
    console.print(table)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "variant 1 of 2" in text and "POSTs 10 of 20" in text and "50%" in text
    assert out.getvalue().splitlines()[:2] == ["variant 1/2: a", "  load"]
    assert out.getvalue().splitlines()[2].startswith("  a: ok, requests ok 10 failed 0, ")


def test_the_drain_shows_the_results_still_queued_as_they_go(tmp_path: Path) -> None:
    display = RunDisplay(Console(file=io.StringIO(), force_terminal=False), plans={"a": Planned(20, None)})
    display.variant_started(1, 1, "a")
    display.phase("load")
    display.load_progress(progress(20), tmp_path)
    display.phase("drain")
    nats = tmp_path / "nats.jsonl"
    for t, pending in ((1.0, 300), (2.0, 120)):
        with nats.open("a") as f:
            record = {"t": t, "stream": "ml_results", "consumer": "c", "num_pending": pending}
            f.write(json.dumps(record) + "\n")
        console = Console(file=io.StringIO(), width=160)
        console.print(display)  # what Live renders at each refresh
        assert f"results queued {pending}" in console.file.getvalue()  # type: ignore[attr-defined]
