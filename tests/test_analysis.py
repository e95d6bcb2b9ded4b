"""summary.json against numbers recomputed here, independently, from the raw records of synthetic runs."""

from __future__ import annotations

import json
import shutil
import statistics
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contend.analysis import inflight, load_run, nats_series, stack_summary, summarize
from contend.errors import ConfigError
from contend.report.figures import peak_downsample
from contend.report.synthetic import DEFAULT_VARIANTS, make_run


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected(folder: Path) -> dict:
    """The documented metric definitions, applied with plain numpy to the files of one variant folder."""
    reqs = [r for p in sorted((folder / "load").glob("requests-*.jsonl")) for r in lines(p)]
    ticks = lines(folder / "samples" / "pg_ticks.jsonl")
    nats = lines(folder / "samples" / "nats.jsonl")
    start, end = min(r["t0"] for r in reqs), max(r["t1"] for r in reqs)
    window = [t for t in ticks if start <= t["t"] <= end]
    posts = [r for r in reqs if r["kind"] == "result"]
    ok = [r for r in posts if r["error"] is None]
    latency = np.array([r["t1"] - r["t0"] for r in posts])
    per_consumer: dict[tuple, int] = {}
    for n in nats:
        if n["stream"] != "ml_results":
            key = (n["stream"], n["consumer"])
            per_consumer[key] = max(per_consumer.get(key, 0), n["num_redelivered"])
    queue = [n["num_pending"] for n in nats if n["stream"] == "ml_results" and start <= n["t"] <= end]
    # A lock wait is one (pid, waitstart): it began at its first tick minus its age, and lasted at
    # least until the last tick that saw it.
    spans: dict[tuple, list[float]] = {}
    for t in ticks:
        for w in t.get("waits") or ():
            span = spans.setdefault((w["pid"], w["waitstart"]), [t["t"] - w["age"], t["t"]])
            span[1] = t["t"]
    inside = [(a, b) for a, b in spans.values() if a <= end and b >= start]
    durations = [b - a for a, b in inside]
    # Without phases in meta.json (no drain recorded) the whole window is the load window; the
    # folder has no server log.
    whole = {
        "edges_max": max(t["edges"] for t in window),
        "blocked_max": max(t["blocked"] for t in window),
        "depth_max": max(t["depth"] for t in window),
        "idle_in_tx_max": max(t["idle_in_tx"] for t in window),
        "lock_waits": len(inside),
        "blocked_seconds": sum(min(b, end) - max(a, start) for a, b in inside),
        "queue_max": max(queue),
    }
    return {
        **whole,
        **{f"{m}_load": v for m, v in whole.items()},
        **{f"{m}_drain": None for m in whole},
        "lock_wait_p50_s": float(np.percentile(durations, 50)) if durations else None,
        "lock_wait_p95_s": float(np.percentile(durations, 95)) if durations else None,
        "lock_wait_max_s": max(durations) if durations else None,
        "results_processed_per_s": None,
        "drain_s": None,
        "drain_timed_out": None,
        "job_done_s": None,
        "pg_lock_waits_logged": None,
        "lock_wait_coverage": None,
        "pg_deadlocks": None,
        "pg_statement_timeouts": None,
        "pg_too_many_clients": None,
        "http_5xx": sum(1 for r in reqs if r["status"] >= 500),
        "http_5xx_at_pg_error": None,
        "edges_max": max(t["edges"] for t in window),
        "edges_p95": float(np.percentile([t["edges"] for t in window], 95)),
        "blocked_max": max(t["blocked"] for t in window),
        "blocked_p95": float(np.percentile([t["blocked"] for t in window], 95)),
        "depth_max": max(t["depth"] for t in window),
        "idle_in_tx_max": max(t["idle_in_tx"] for t in window),
        "idle_in_tx_max_age_s": max(t["idle_in_tx_max_age"] for t in window),
        "posts_ok": len(ok),
        "posts_total": len(posts),
        "post_ok_ratio": len(ok) / len(posts),
        "latency_p50_s": float(np.percentile(latency, 50)),
        "latency_p95_s": float(np.percentile(latency, 95)),
        "latency_p99_s": float(np.percentile(latency, 99)),
        "latency_max_s": float(latency.max()),
        "results_accepted_per_s": sum(r["results"] for r in ok) / (end - start),
        "redeliveries": sum(per_consumer.values()),
        "dup_tasks": sum(r["dup_tasks"] for r in reqs),
        "duplicate_results": sum(r["dup_results"] for r in reqs),
        "timeouts": sum(1 for r in reqs if r["error"] and "timeout" in r["error"].lower()),
        "requests_total": len(reqs),
        "requests_failed": sum(1 for r in reqs if r["error"] is not None),
        "sampler_cost_ms_p95": float(np.percentile([t["cost_ms"] for t in ticks], 95)),
        "sampler_late_ms_p95": float(np.percentile([t["late_ms"] for t in ticks], 95)),
        **expected_fairness(reqs, jobs=sorted({r["job"] for r in reqs if r["job"] is not None})),
        "lost_updates": None,  # no final_state.json: nothing probed the jobs' counts
        **expected_graph(lines(folder / "samples" / "waitgraph.jsonl")),
        **expected_images(reqs),
    }


def expected_images(reqs: list[dict]) -> dict:
    images = [r for r in reqs if r["kind"] == "image"]
    seconds = [r["t1"] - r["t0"] for r in images]
    return {
        "image_loads": sum(1 for r in images if r["error"] is None),
        "image_load_failed": sum(1 for r in images if r["error"] is not None),
        "image_load_p50_s": float(np.percentile(seconds, 50)),
        "image_load_p95_s": float(np.percentile(seconds, 95)),
        "image_mb": sum(r["recv"] for r in images if r["error"] is None) / 1e6,
    }


def expected_graph(graphs: list[dict]) -> dict:
    """Deadlock episodes: runs of consecutive graphs showing the same cycle; gauges: their maxima."""
    episodes, shown = 0, set()
    for g in sorted(graphs, key=lambda g: g["t"]):
        now = {f["key"] for f in g["findings"] if f["kind"] == "cross_layer_deadlock"}
        episodes += len(now - shown)
        shown = now
    return {
        "cross_layer_deadlocks": episodes,
        "python_lock_waiters_max": max((g["gauges"]["python_lock_waiters"] for g in graphs), default=0),
        "idle_in_tx_blocked_in_app_max": max((g["gauges"]["idle_in_tx_blocked_in_app"] for g in graphs),
                                             default=0),
    }


def expected_fairness(reqs: list[dict], jobs: list[int]) -> dict:
    start, end = min(r["t0"] for r in reqs), max(r["t1"] for r in reqs)
    firsts = {}
    for r in reqs:
        if r["kind"] == "result" and r["error"] is None:
            firsts[r["job"]] = min(firsts.get(r["job"], r["t1"]), r["t1"])
    started = [firsts[j] - start for j in jobs if j in firsts]
    return {
        "jobs_started": len(started),
        "starved_jobs": len(jobs) - len(started),
        "first_result_s_p50": float(np.median(started)) if started else None,
        "first_result_s_max": max([*started, *([end - start] * (len(jobs) - len(started)))]),
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("single"), duration_s=40, backends=10, with_backends=False)


@pytest.fixture(scope="module")
def repeated_dir(tmp_path_factory) -> Path:
    return make_run(
        tmp_path_factory.mktemp("rep"), duration_s=20, backends=8, repetitions=3, with_backends=False
    )


def test_summary_metrics_equal_the_raw_records(run_dir):
    summary = summarize(load_run(run_dir))
    assert summary["scenario"] == "synthetic" and summary["status"] == "complete"
    assert summary["baseline"] == DEFAULT_VARIANTS[0].name
    assert list(summary["variants"]) == [v.name for v in DEFAULT_VARIANTS]
    for v in DEFAULT_VARIANTS:
        entry = summary["variants"][v.name]
        want = expected(run_dir / "variants" / v.name)
        assert set(entry["metrics"]) == set(want)
        for metric, value in want.items():
            if value is None:
                assert entry["metrics"][metric] is None, metric
            else:
                assert entry["metrics"][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), metric
        assert entry["flags"] == v.flags and entry["params"] == v.params and entry["repetitions"] == 1
        assert "spread" not in entry


def test_the_synthetic_contention_shows_in_the_metrics(run_dir):
    # Guards the fixture itself: the contended variant must differ, or the tests above prove little.
    m = {name: e["metrics"] for name, e in summarize(load_run(run_dir))["variants"].items()}
    assert m["logs-on"]["edges_max"] > 5 > m["logs-off"]["edges_max"]
    assert m["logs-on"]["timeouts"] > 0


def test_deltas_are_against_the_baseline_and_unknown_without_spread(run_dir):
    summary = summarize(load_run(run_dir))
    base = summary["variants"]["logs-on"]
    assert base["deltas"] == {}
    other = summary["variants"]["logs-off"]
    for metric, delta in other["deltas"].items():
        b, v = base["metrics"][metric], other["metrics"][metric]
        assert delta["abs"] == pytest.approx(v - b, abs=1e-5)
        assert delta["rel"] == (pytest.approx((v - b) / b, abs=1e-5) if b else None)
        assert delta["real"] is None


def test_repetitions_give_median_spread_and_a_bootstrap_interval_of_each_delta(repeated_dir):
    summary = summarize(load_run(repeated_dir))
    for name in ("logs-on", "logs-off"):
        per_rep = [expected(repeated_dir / "variants" / f"{name}~r{k}") for k in (1, 2, 3)]
        entry = summary["variants"][name]
        assert entry["repetitions"] == 3
        for metric in ("edges_max", "posts_total", "latency_p95_s", "sampler_cost_ms_p95"):
            values = [r[metric] for r in per_rep]
            assert entry["metrics"][metric] == pytest.approx(statistics.median(values), rel=1e-5)
            assert entry["spread"][metric] == pytest.approx([min(values), max(values)], rel=1e-5)
    on, off = summary["variants"]["logs-on"], summary["variants"]["logs-off"]
    for metric, delta in off["deltas"].items():
        # Three repetitions each: a 95 % bootstrap interval of the difference; real when it excludes 0.
        low, high = delta["ci"]
        assert low <= delta["abs"] <= high, metric
        assert delta["real"] is (low > 0 or high < 0), metric
        lo, hi = off["spread"][metric]
        blo, bhi = on["spread"][metric]
        if lo > bhi or hi < blo:  # ranges apart: every resampled difference has the same sign
            assert delta["real"] is True, metric
    assert off["deltas"]["edges_max"]["real"] is True


def test_a_killed_run_still_loads_and_says_what_is_missing(run_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    ticks_path = partial / "variants" / "logs-on" / "samples" / "pg_ticks.jsonl"
    text = ticks_path.read_text()
    n_complete = len(text.splitlines())
    ticks_path.write_text(text + text.splitlines()[0][:37])  # a line cut mid-write
    (partial / "variants" / "logs-off" / "samples" / "nats.jsonl").unlink()
    (partial / "variants" / "logs-off" / "meta.json").unlink()
    meta = json.loads((partial / "meta.json").read_text())
    (partial / "meta.json").write_text(json.dumps(meta | {"status": "partial"}))

    run = load_run(partial)
    assert len(run.variants["logs-on"][0].ticks) == n_complete
    summary = summarize(run)
    assert summary["status"] == "partial"
    on, off = summary["variants"]["logs-on"], summary["variants"]["logs-off"]
    assert any("pg_ticks.jsonl: skipped 1 unreadable line" in n for n in on["notes"])
    assert off["status"] == "partial" and off["metrics"]["redeliveries"] is None
    assert any("nats.jsonl missing" in n for n in off["notes"])
    assert off["metrics"]["posts_total"] == expected(run_dir / "variants" / "logs-off")["posts_total"]


@pytest.mark.integration
def test_a_run_whose_writer_is_gone_reads_as_interrupted_not_running(run_dir, tmp_path):
    import os
    import platform
    import subprocess
    import sys

    folder = tmp_path / "killed"
    shutil.copytree(run_dir, folder)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    meta = json.loads((folder / "meta.json").read_text())
    running = meta | {"status": "running", "ended": None, "host": platform.node()}
    variant_meta = folder / "variants" / "logs-off" / "meta.json"
    (variant_meta).write_text(json.dumps(json.loads(variant_meta.read_text()) | {"status": "running"}))
    (folder / "meta.json").write_text(json.dumps(running | {"pid": int(gone.stdout)}))
    summary = summarize(load_run(folder))
    assert summary["status"] == "interrupted"
    assert summary["variants"]["logs-off"]["status"] == "interrupted"
    assert "killed" in summary["variants"]["logs-off"]["reason"]
    # While its writer runs (this process stands in for it), the same folder is still running.
    now = datetime.now(UTC).isoformat()
    (folder / "meta.json").write_text(json.dumps(running | {"pid": os.getpid(), "started": now}))
    assert summarize(load_run(folder))["status"] == "running"


def test_postgres_and_queue_metrics_cover_load_and_drain_and_each_apart(run_dir, tmp_path):
    folder = tmp_path / "drained"
    shutil.copytree(run_dir, folder)
    variant = folder / "variants" / "logs-on"
    reqs = [r for p in sorted((variant / "load").glob("requests-*.jsonl")) for r in lines(p)]
    ticks = lines(variant / "samples" / "pg_ticks.jsonl")
    start, end = min(r["t0"] for r in reqs), max(r["t1"] for r in reqs)
    # The load ends 10 s before the last tick; say the drain took those 10 s and wrote 180 images.
    load_end = ticks[-1]["t"] - 10.0
    kept = [r for r in reqs if r["t1"] <= load_end]
    for path in (variant / "load").glob("requests-*.jsonl"):
        path.unlink()
    (variant / "load" / "requests-w0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    start, end = min(r["t0"] for r in kept), max(r["t1"] for r in kept)
    drain_end = ticks[-1]["t"]
    meta = json.loads((variant / "meta.json").read_text())
    meta["phases"] = {"load": {"start": start - 0.1, "end": end + 0.01},
                      "drain": {"start": end + 0.01, "end": drain_end, "timed_out": False, "processed": 180}}
    meta["jobs_done"] = {"1": end + 2.0, "2": end + 5.0}  # each job's finished_at
    (variant / "meta.json").write_text(json.dumps(meta))
    variant_entry = summarize(load_run(folder))["variants"]["logs-on"]
    entry = variant_entry["metrics"]
    done = variant_entry["job_done_s"]
    assert done == {"1": pytest.approx(end + 2.0 - start), "2": pytest.approx(end + 5.0 - start)}
    assert entry["job_done_s"] == pytest.approx(end + 5.0 - start)
    in_load = [t["edges"] for t in ticks if start <= t["t"] <= end]
    in_drain = [t["edges"] for t in ticks if end <= t["t"] <= drain_end]
    assert entry["edges_max_load"] == max(in_load) and entry["edges_max_drain"] == max(in_drain)
    assert entry["edges_max"] == max(in_load + in_drain)
    assert entry["drain_s"] == pytest.approx(drain_end - end)
    assert entry["drain_timed_out"] == 0
    assert entry["results_processed_per_s"] == pytest.approx(180 / (drain_end - start))
    ok = [r for r in kept if r["kind"] == "result" and r["error"] is None]
    assert entry["results_accepted_per_s"] == pytest.approx(sum(r["results"] for r in ok) / (end - start))


def test_a_variant_without_any_records_still_summarizes(run_dir, tmp_path):
    partial = tmp_path / "early"
    shutil.copytree(run_dir, partial)
    shutil.rmtree(partial / "variants" / "logs-off" / "load")
    shutil.rmtree(partial / "variants" / "logs-off" / "samples")
    entry = summarize(load_run(partial))["variants"]["logs-off"]
    assert entry["metrics"]["posts_total"] is None and entry["metrics"]["latency_p95_s"] is None
    assert entry["metrics"]["timeouts"] is None  # unknown, not zero: nothing was recorded
    assert "latency_p95_s" not in entry["deltas"]


def write_requests(folder: Path, reqs: list[dict]) -> None:
    (folder / "load").mkdir(parents=True)
    keys = {"status": 200, "sent": 1, "recv": 1, "results": 1, "tasks": 0, "dup_tasks": 0, "dup_results": 0,
            "worker": "w0-u1", "wave": None}
    text = "".join(json.dumps({**keys, **r}) + "\n" for r in reqs)
    (folder / "load" / "requests-w0.jsonl").write_text(text)


def fairness_run(root: Path, server_jobs: list[int] | None) -> Path:
    """Jobs 1 and 2 get results at 5 s and 12 s (job 2 fails first), a poll at 0-1 s; load 0-30 s."""
    folder = root / "variants" / "v"
    t = 1_767_225_600.0
    write_requests(folder, [
        {"t0": t, "t1": t + 1, "kind": "poll", "error": None, "job": None},
        {"t0": t + 2, "t1": t + 5, "kind": "result", "error": None, "job": 1},
        {"t0": t + 3, "t1": t + 8, "kind": "result", "error": "ReadTimeout", "status": 0, "job": 2},
        {"t0": t + 9, "t1": t + 12, "kind": "result", "error": None, "job": 2},
        {"t0": t + 10, "t1": t + 11, "kind": "result", "error": None, "job": 1},
        {"t0": t + 20, "t1": t + 30, "kind": "tasks", "error": None, "job": 1},
    ])
    (folder / "meta.json").write_text(json.dumps({"name": "v", "status": "ok"}))
    if server_jobs is not None:
        (folder / "stack").mkdir()
        (folder / "stack" / "stack.json").write_text(json.dumps({"refserver": {"job_ids": server_jobs}}))
    return root


def test_fairness_counts_started_and_starved_jobs_of_the_target(tmp_path):
    metrics = summarize(load_run(fairness_run(tmp_path / "a", [1, 2, 3, 4])))["variants"]["v"]["metrics"]
    # Jobs 3 and 4 of the server never got a result: starved, counted as the full 30 s for the max.
    assert (metrics["jobs_started"], metrics["starved_jobs"]) == (2, 2)
    assert metrics["first_result_s_p50"] == pytest.approx(8.5)  # median of 5 and 12
    assert metrics["first_result_s_max"] == pytest.approx(30.0)
    # An external target: the jobs are those the records name, and both started.
    metrics = summarize(load_run(fairness_run(tmp_path / "b", None)))["variants"]["v"]["metrics"]
    assert (metrics["jobs_started"], metrics["starved_jobs"]) == (2, 0)
    assert metrics["first_result_s_max"] == pytest.approx(12.0)


def test_lost_updates_come_from_final_state_and_skip_added_rows_of_repeated_results(tmp_path):
    root = fairness_run(tmp_path, [1, 2])
    folder = root / "variants" / "v"

    def job(recorded: tuple[int, int, int], true: tuple[int, int, int]) -> dict:
        keys = ("captures", "detections", "classifications")
        return {"status": "STARTED", "images": 10, "recorded": dict(zip(keys, recorded, strict=True)),
                "true": dict(zip(keys, true, strict=True))}

    final = {"t": 0, "settled": True, "waited_s": 1.0,
             "jobs": {"1": job((7, 14, 14), (9, 18, 18)), "2": job((4, 8, 8), (4, 12, 12))}}
    (folder / "final_state.json").write_text(json.dumps(final))
    assert summarize(load_run(root))["variants"]["v"]["metrics"]["lost_updates"] == 2 + 4 + 4 + 0 + 4 + 4
    # NATS redelivered job 2's tasks: its extra detections and classifications are repeated results.
    (folder / "samples").mkdir()
    (folder / "samples" / "nats.jsonl").write_text(json.dumps(
        {"t": 1, "stream": "job_2", "consumer": "job-2-consumer", "num_pending": 0, "num_redelivered": 3}))
    assert summarize(load_run(root))["variants"]["v"]["metrics"]["lost_updates"] == 2 + 4 + 4
    final["settled"] = False
    (folder / "final_state.json").write_text(json.dumps(final))
    assert any("before the result workers were idle" in n for n in load_run(root).variants["v"][0].notes)


def test_not_a_run_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no variants"):
        load_run(tmp_path)
    with pytest.raises(ConfigError, match="not a run folder"):
        load_run(tmp_path / "nope")


def test_requests_in_flight_count_started_and_not_ended():
    requests = pd.DataFrame({"t0": [0.0, 1.0, 2.0], "t1": [3.0, 1.5, 5.0]})
    # at 1.2: the first two; at 2.5: first and third; at 3.0 the first has ended; at 6 none.
    assert inflight(requests, np.array([1.2, 2.5, 3.0, 6.0])).tolist() == [2, 2, 1, 0]


def test_downsampling_keeps_every_spike():
    x = np.arange(6000, dtype=float)
    y = np.zeros(6000)
    y[[17, 2500, 5999]] = [9, 30, 4]
    dx, dy = peak_downsample(x, y, points=100)
    assert len(dx) == 100
    assert dict(zip(dx[dy > 0].tolist(), dy[dy > 0].tolist(), strict=True)) == {
        17.0: 9,
        2500.0: 30,
        5999.0: 4,
    }


def test_redeliveries_are_cumulative_though_nats_counts_only_those_awaiting_their_ack():
    from contend.analysis import redeliveries

    # num_redelivered rises to 3 and falls back as the redelivered tasks are acked; delivered (every
    # delivery) minus delivered_stream (each task once) keeps the total.
    rows = [
        {"t": t, "stream": "job_1", "consumer": "c", "num_pending": 0, "delivered": delivered,
         "delivered_stream": stream, "num_redelivered": awaiting}
        for t, delivered, stream, awaiting in (
            (1.0, 10, 10, 0), (2.0, 13, 10, 3), (3.0, 15, 12, 1), (4.0, 16, 12, 0))
    ]
    nats = pd.DataFrame(rows)
    assert redeliveries(nats) == 4
    assert nats_series(nats)["redelivered"].tolist() == [0.0, 3.0, 3.0, 4.0]


def test_nats_series_sums_redeliveries_of_job_consumers_only():
    rows = [
        {"t": 10.2, "stream": "ml_results", "consumer": "w", "num_pending": 7, "num_redelivered": 99},
        {"t": 10.1, "stream": "job_1", "consumer": "job-1-consumer", "num_pending": 0, "num_redelivered": 2},
        {"t": 10.3, "stream": "job_2", "consumer": "job-2-consumer", "num_pending": 0, "num_redelivered": 1},
        {"t": 11.1, "stream": "job_1", "consumer": "job-1-consumer", "num_pending": 0, "num_redelivered": 3},
    ]
    series = nats_series(pd.DataFrame(rows))
    # At 11 s job_2 reported nothing: its last value (1) carries forward; ml_results is not counted.
    assert series["t"].tolist() == [10.0, 11.0]
    assert series["redelivered"].tolist() == [3.0, 4.0]
    assert series["queue"].iloc[0] == 7 and np.isnan(series["queue"].iloc[1])


def test_stack_summary_finds_an_external_servers_own_code():
    psycopg = {
        "name": "wait",
        "filename": "/usr/local/lib/python3.11/site-packages/psycopg/waiting.py",
        "line": 1,
    }
    thread = {
        "thread_id": 1,
        "idle": True,
        "active": False,
        "frames": [
            psycopg,
            {"name": "_update_job_progress", "filename": "/app/ami/jobs/tasks.py", "line": 493},
            {"name": "run", "filename": "/app/ami/base/worker.py", "line": 9},
        ],
    }
    dumps = [{"t": 1.0, "pid": 7, "role": "worker", "threads": [thread] * 7}]
    assert stack_summary(dumps) == ["7 of 7 result workers in psycopg wait <- _update_job_progress"]


def test_compare_gives_each_delta_across_two_repeated_runs_a_bootstrap_interval(repeated_dir, tmp_path):
    from contend.report import merge_runs

    run = load_run(repeated_dir)
    merged = summarize(merge_runs(run, run, tmp_path))
    # B's copy of the baseline against A's baseline: the same repetitions, so nothing is distinguishable.
    same = merged["variants"]["B: logs-on"]["deltas"]["latency_p95_s"]
    assert same["abs"] == 0 and same["ci"][0] <= 0 <= same["ci"][1] and same["real"] is False
    other = merged["variants"]["B: logs-off"]["deltas"]["edges_max"]
    assert other["real"] is True and (other["ci"][1] < 0 or other["ci"][0] > 0)


def test_server_errors_are_linked_to_what_postgres_logged_while_they_were_in_flight(tmp_path):
    from datetime import UTC, datetime

    from contend.analysis import load_variant, variant_metrics

    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"

    base = 1_800_000_000.0
    keys = {"sent": 1, "recv": 1, "results": 0, "tasks": 0, "dup_tasks": 0, "dup_results": 0,
            "worker": "w0-u1", "job": 1, "kind": "result"}
    requests = [
        {**keys, "t0": base, "t1": base + 1.0, "status": 500, "error": "HTTP 500"},  # too many clients
        {**keys, "t0": base + 5.0, "t1": base + 6.0, "status": 503, "error": "HTTP 503"},  # nothing logged
        {**keys, "t0": base + 7.0, "t1": base + 8.0, "status": 200, "error": None},
    ]
    (tmp_path / "load").mkdir()
    (tmp_path / "load" / "requests-w0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    (tmp_path / "stack" / "postgres").mkdir(parents=True)
    (tmp_path / "stack" / "postgres" / "postgres.log").write_text(
        f"{stamp(base + 0.5)} [11] [[unknown]] FATAL:  sorry, too many clients already\n"
        f"{stamp(base + 7.5)} [12] [contend-ref:web pid=1 tid=2 ntid=3] ERROR:  deadlock detected\n"
        f"{stamp(base + 9.5)} [13] [] ERROR:  deadlock detected\n")  # after the last response: outside
    m = variant_metrics(load_variant(tmp_path))
    assert (m["http_5xx"], m["http_5xx_at_pg_error"]) == (2, 1)
    assert (m["pg_too_many_clients"], m["pg_deadlocks"], m["pg_statement_timeouts"]) == (1, 1, 0)
    assert m["pg_lock_waits_logged"] == 0 and m["lock_wait_coverage"] is None


def test_a_load_shorter_than_a_tick_is_measured_by_the_first_tick_after_it_starts(tmp_path):
    # Five fast POSTs can end within 60 ms, between two ticks of a 10 Hz sampler: the load's figures
    # come from the next tick rather than being missing (a gate on them would fail for no reason).
    from contend.analysis import load_variant, variant_metrics

    base = 1_800_000_000.0
    keys = {"sent": 1, "recv": 1, "results": 20, "tasks": 0, "dup_tasks": 0, "dup_results": 0,
            "worker": "w0-u1", "job": 1, "kind": "result", "status": 200, "error": None}
    (tmp_path / "load").mkdir()
    (tmp_path / "load" / "requests-w0.jsonl").write_text(
        json.dumps({**keys, "t0": base + 0.01, "t1": base + 0.07}) + "\n")
    tick = {"backends": 3, "blocked": 0, "depth": 0, "roots": [], "idle_in_tx": 0, "idle_in_tx_max_age": 0.0,
            "locked_relations": [], "wait_events": {}, "cost_ms": 1.0, "late_ms": 0.0, "blocking_calls": 0,
            "waits": []}
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "pg_ticks.jsonl").write_text("".join(
        json.dumps({**tick, "t": base + t, "edges": edges}) + "\n"
        for t, edges in ((-0.05, 7), (0.09, 2), (0.19, 5))))
    drain = {"start": base + 0.07, "end": base + 0.3, "timed_out": False}
    (tmp_path / "meta.json").write_text(json.dumps({"name": "v", "status": "ok", "phases": {"drain": drain}}))
    m = variant_metrics(load_variant(tmp_path))
    assert m["edges_max_load"] == 2  # the tick at +0.09 s, not the one before the load nor a later one
    assert m["edges_max_drain"] == 5 and m["edges_max"] == 5


def test_a_thread_waiting_for_a_logging_handlers_lock_is_a_lock_wait_not_idle() -> None:
    # "Where server threads wait" and the wait-for graph read a thread's state the same way: a thread
    # stopped in logging.Handler.acquire waits for the handler's lock (the source says so).
    import inspect
    import logging

    from contend.diagnosis.threads import thread_state

    lines, first = inspect.getsourcelines(logging.Handler.acquire)
    line = first + next(i for i, text in enumerate(lines) if "self.lock.acquire()" in text)
    waiting = {"active": False, "frames": [
        {"name": "Handler.acquire", "filename": logging.__file__, "line": line},
        {"name": "Handler.handle", "filename": logging.__file__, "line": 1},
        {"name": "job_result", "filename": "/srv/app/jobs/views.py", "line": 299},
    ]}
    assert thread_state(waiting, ["/srv/app/"]) == "lock wait"
    sleeping = {**waiting, "frames": [{"name": "sleep", "filename": "/srv/app/jobs/views.py", "line": 1}]}
    assert thread_state(sleeping, ["/srv/app/"]) == "idle"


def test_a_library_file_is_named_from_its_package() -> None:
    from contend.diagnosis.threads import short_path

    site = "/srv/venv/lib/python3.11/site-packages/celery/events/dispatcher.py"
    assert short_path(site) == "celery/events/dispatcher.py"
    assert short_path("/usr/lib/python3.11/logging/__init__.py") == "logging/__init__.py"
    assert short_path("/srv/app/ami/jobs/views.py") == "views.py"
    assert short_path(None) == "?"
