"""`contend run` end to end against the reference server: report, summary, interruption, a dying server."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from contend.errors import ExitCode
from tests.conftest import CONTEND, alive, cmdline, processes_mentioning, stack_processes, wait_for

pytestmark = pytest.mark.slow

# With log persistence on, the POSTs and the workers deadlock on the job row until statement_timeout
# breaks it, one waiter at a time: 5 s instead of Antenna's 30 s lets the logs-on variant end and its
# final counts settle in about half a minute instead of two and a half minutes.
TWO_VARIANTS = """\
name: two
target: {preset: pr-1261, web_concurrency: 1, worker_concurrency: 2, images_per_job: 40,
         flags: {DB_STATEMENT_TIMEOUT_MS: 5000}}
workloads:
  - {kind: batched_post, batch: 10, concurrency: 3, rounds: 2, timeout_s: 30}
warm_up_s: 0.5
cool_down_s: 0.5
drain_timeout_s: 60
sampling: {pyspy_interval_s: 1.0}
variants:
  - {name: logs-on, flags: {JOB_LOG_PERSIST_ENABLED: true}}
  - {name: logs-off, baseline: true, flags: {JOB_LOG_PERSIST_ENABLED: false}}
thresholds:
  # With job-log persistence on, the POSTs may wait past their timeout behind the job row's lock.
  - {check: post_ok_ratio == 1, variants: [logs-off]}
"""

# The tests stop it once the first request is recorded: with log persistence on the POSTs deadlock on
# the job row, so the first one is recorded when it times out.
LONG = """\
name: long
target: {preset: pr-1261, web_concurrency: 1, worker_concurrency: 2, images_per_job: 40}
workloads:
  - {kind: batched_post, batch: 5, concurrency: 2, duration_s: 120, timeout_s: 5}
warm_up_s: 0
cool_down_s: 0
variants:
  - {name: first}
  - {name: second, flags: {JOB_LOG_PERSIST_ENABLED: false}}
"""


def _scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def _records(folder: Path) -> list[dict[str, object]]:
    rows = []
    for path in sorted(folder.glob("load/requests-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def _p95(values: list[float]) -> float:
    """Linear-interpolated 95th percentile (numpy's default), computed by hand."""
    ordered = sorted(values)
    rank = 0.95 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _survivors(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if alive(p)]


def _no_contend_children(run_dir: Path) -> bool:
    # Postgres, NATS, the reference server, the samplers and locust all name the run folder in argv.
    return not stack_processes(run_dir) and not processes_mentioning(str(run_dir))


def test_two_variants_give_a_report_whose_numbers_come_from_the_raw_records(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    out = subprocess.run([*CONTEND, "run", str(_scenario(tmp_path, TWO_VARIANTS)), "--reports", str(reports),
                          "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    run_dir = Path(printed["run_dir"])
    assert printed["status"] == "complete"
    assert (run_dir / "report.html").stat().st_size > 10_000
    assert (run_dir / "report.md").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["baseline"] == "logs-off"
    assert set(summary["variants"]) == {"logs-on", "logs-off"}
    for name in ("logs-on", "logs-off"):
        folder = run_dir / "variants" / name
        posts = [r for r in _records(folder) if r["kind"] == "result"]
        assert len(posts) == 3 * 2  # concurrency x rounds
        ok = [r for r in posts if r["error"] is None]
        metrics = summary["variants"][name]["metrics"]
        assert metrics["posts_total"] == len(posts)
        assert metrics["posts_ok"] == len(ok)
        latencies = [float(r["t1"]) - float(r["t0"]) for r in posts]  # type: ignore[arg-type]
        assert metrics["latency_p95_s"] == pytest.approx(_p95(latencies), rel=1e-3, abs=1e-3)
        assert metrics["latency_max_s"] == pytest.approx(max(latencies), rel=1e-3, abs=1e-3)
        tick_lines = (folder / "samples" / "pg_ticks.jsonl").read_text().splitlines()
        # Postgres figures cover the load and its drain: first request start to the drain's end.
        start = min(float(r["t0"]) for r in _records(folder))  # type: ignore[arg-type]
        end = max(float(r["t1"]) for r in _records(folder))  # type: ignore[arg-type]
        meta = json.loads((folder / "meta.json").read_text())
        drain_end = meta["phases"]["drain"]["end"]
        ticks = [t for t in map(json.loads, tick_lines) if start <= t["t"] <= drain_end]
        assert ticks, "the Postgres sampler wrote ticks during the load"
        assert metrics["edges_max"] == max(t["edges"] for t in ticks)
        # A load shorter than a tick (logs-off's six POSTs can take 90 ms) is measured by the first
        # tick after its start (docs/metrics.md).
        load_ticks = [t for t in ticks if t["t"] <= end] or [
            next(t for t in map(json.loads, tick_lines) if t["t"] >= start)]
        assert metrics["edges_max_load"] == max(t["edges"] for t in load_ticks)
        assert metrics["drain_s"] == pytest.approx(drain_end - end, abs=1e-3)
        assert meta["status"] == "ok" and meta["flags"]["JOB_LOG_PERSIST_ENABLED"] == (
            "true" if name == "logs-on" else "false")
        # The final counts probe ran before the stack stopped; error results add no counts to lose.
        final = json.loads((folder / "final_state.json").read_text())
        assert final["settled"] and list(final["jobs"]) == [str(j) for j in json.loads(
            (folder / "stack" / "stack.json").read_text())["refserver"]["job_ids"]]
        assert metrics["lost_updates"] == 0
        started = 1 if ok else 0  # logs-on's POSTs may all time out (thresholds above)
        assert (metrics["jobs_started"], metrics["starved_jobs"]) == (started, 1 - started)
        # Four phases in order on the samplers' clock, between the set-up and tear-down steps that are
        # timed too; the drain waited for the workers, samplers running.
        phases = meta["phases"]
        assert list(phases) == ["stack_up", "samplers_up", "warm_up", "load", "drain", "cool_down",
                                "samplers_down", "final_counts", "stack_down"]
        bounds = [t for p in phases.values() for t in (p["start"], p["end"])]
        assert bounds == sorted(bounds)
        assert phases["load"]["start"] <= start and end <= phases["load"]["end"]
        drain = phases["drain"]
        assert drain["method"] == "queue+workers"
        if name == "logs-off":  # the workers finish; with logs on they may still wait on the job row
            assert drain["timed_out"] is False
            # Images with a result written: a detection for a result, a failed-image row for an error one.
            written = sum(j["true"]["captures"] + (j["true"]["failed"] or 0) for j in final["jobs"].values())
            assert drain["processed"] == written > 0
        assert meta["phase_s"]["drain"] == pytest.approx(drain["end"] - drain["start"], abs=1e-3)
        assert max(json.loads(line)["t"] for line in tick_lines) >= drain["end"]
        # A lean folder: the server logs stay, Postgres' data directory and the NATS store do not.
        assert (folder / "stack" / "postgres" / "postgres.log").exists()
        assert not (folder / "stack" / "postgres" / "pgdata").exists()
        assert not (folder / "stack" / "nats" / "nats-store").exists()
        assert (folder / "samples" / "pg_backends.jsonl.gz").exists()
        assert not (folder / "samples" / "pg_backends.jsonl").exists()
    stack_json = (run_dir / "variants" / "logs-on" / "stack" / "stack.json").read_text()
    assert '"token": "(not kept)"' in stack_json
    assert _no_contend_children(run_dir)

    rerendered = subprocess.run([*CONTEND, "report", str(run_dir)], capture_output=True, text=True,
                                timeout=300)
    assert rerendered.returncode == 0, rerendered.stderr
    assert json.loads((run_dir / "summary.json").read_text())["variants"] == summary["variants"]


def _start_long_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    reports = tmp_path / "reports"
    proc = subprocess.Popen([*CONTEND, "run", str(_scenario(tmp_path, LONG)), "--reports", str(reports)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    plan = wait_for(lambda: next(reports.glob("long-*/variants/first/load/requests-*.jsonl"), None),
                    timeout=300)
    assert isinstance(plan, Path)
    return proc, plan.parents[3]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_writes_a_partial_report_and_leaves_no_process(tmp_path: Path,
                                                                          sig: signal.Signals) -> None:
    proc, run_dir = _start_long_run(tmp_path)
    wait_for(lambda: _records(run_dir / "variants" / "first"), timeout=120)
    children = _descendants(proc.pid)
    names = " ".join(cmdline(p) for p in children)
    for part in ("postgres", "nats-server", "contend.refserver", "contend.sample", "contend.load"):
        assert part in names, f"{part} should run during the load"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert err.count("Error:") == 1 and "Traceback" not in err
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "partial"
    assert json.loads((run_dir / "variants" / "first" / "meta.json").read_text())["status"] == "partial"
    assert not (run_dir / "variants" / "second").exists()
    assert (run_dir / "report.html").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["variants"]["first"]["metrics"]["posts_total"] > 0
    wait_for(lambda: not _survivors(children), timeout=30)
    assert _no_contend_children(run_dir)


def test_a_server_process_that_dies_fails_its_variant_and_the_run_goes_on(tmp_path: Path) -> None:
    proc, run_dir = _start_long_run(tmp_path)
    first = run_dir / "variants" / "first"
    wait_for(lambda: _records(first), timeout=120)
    children = _descendants(proc.pid)
    web = json.loads((first / "stack" / "stack.json").read_text())["refserver"]["pids"]["web"][0]
    psutil.Process(web).kill()
    wait_for(lambda: (run_dir / "variants" / "second" / "load").exists(), timeout=300)
    meta = json.loads((first / "meta.json").read_text())
    assert meta["status"] == "failed"
    assert "died" in meta["reason"]
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    wait_for(lambda: not _survivors(children + _descendants(proc.pid) if proc.poll() is None else children),
             timeout=30)
    assert _no_contend_children(run_dir)


def test_a_run_killed_with_sigkill_re_renders_as_interrupted(tmp_path: Path) -> None:
    proc, run_dir = _start_long_run(tmp_path)
    wait_for(lambda: _records(run_dir / "variants" / "first"), timeout=120)
    children = _descendants(proc.pid)
    proc.kill()  # kill -9: no handler runs, the folder still says "running"
    proc.communicate(timeout=60)
    wait_for(lambda: not _survivors(children), timeout=30)
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "running"
    out = subprocess.run([*CONTEND, "report", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["variants"]["first"]["status"] == "interrupted"
    assert summary["variants"]["first"]["metrics"]["posts_total"] > 0
    assert "was <b>interrupted</b>" in (run_dir / "report.html").read_text()
    assert _no_contend_children(run_dir)
