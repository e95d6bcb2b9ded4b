"""The load engine against a small local Antenna app (the wire contract, no database).

Every run here starts real locust processes; the loads are scaled down so the module runs in
well under a minute on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from pydantic import SecretStr

from contend.errors import ConfigError
from contend.load import BatchedPost, LoadRun, LoadTarget, PullWorkers, read_records, run_load
from contend.load.config import workload_from
from contend.load.launcher import make_plan, read_token_for
from tests.conftest import contend, processes_mentioning, wait_for

TOKEN = "f00dfeedc0ffee15a5ecre7ba5e40hexchars00"
RECORD_KEYS = [
    "t0",
    "t1",
    "kind",
    "status",
    "sent",
    "recv",
    "error",
    "job",
    "results",
    "tasks",
    "dup_tasks",
    "dup_results",
    "worker",
    "wave",
]


class FakeAntenna:
    """The jobs list, /tasks/ and /result/ of Antenna's API on 127.0.0.1, counting what it receives.

    ``redeliver`` puts every task back once after it was handed out (a NATS redelivery); ``images``
    names images it serves itself (even task ids) and images nothing serves (odd ones).
    """

    def __init__(
        self, jobs: dict[int, int] | None = None, delay_s: float = 0.0, redeliver: bool = False,
        images: bool = False,
    ) -> None:
        self.delay_s, self.redeliver, self.images = delay_s, redeliver, images
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.queues = {job: [str(job * 1000 + i) for i in range(n)] for job, n in (jobs or {1: 0}).items()}
        self.redelivered: set[str] = set()
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                app.handle(self, "GET")

            def do_POST(self):
                app.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeAntenna:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, kind: str) -> int:
        with self.lock:
            return sum(r["kind"] == kind for r in self.requests)

    def image_url(self, task: str) -> str:
        if not self.images:
            return f"http://127.0.0.1/{task}.jpg"
        # Port 1: nothing listens there, the download fails at once.
        return f"{self.url}/images/{task}.jpg" if int(task) % 2 == 0 else f"http://127.0.0.1:1/{task}.jpg"

    def serve_image(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests.append({"kind": "image", "results": 0, "auth": h.headers.get("Authorization")})
        data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        if h.path.startswith("/images/"):
            self.serve_image(h)
            return
        parts = [p for p in urlsplit(h.path).path.split("/") if p]
        kind = {"GET": "poll"}.get(method, parts[-1] if len(parts) == 5 else "?")
        entry = {"kind": kind, "results": 0, "auth_ok": h.headers.get("Authorization") == f"Token {TOKEN}"}
        status, body = 200, {}
        if not entry["auth_ok"]:
            status, body = 401, {"detail": "Invalid token."}
        elif kind == "poll":
            with self.lock:
                ids = [job for job, queue in self.queues.items() if queue]
            body = {
                "count": len(ids),
                "next": None,
                "previous": None,
                "results": [{"id": j, "pipeline_slug": "moths", "user_permissions": []} for j in ids],
            }
        elif kind == "tasks":
            job, size = int(parts[3]), json.loads(raw)["batch_size"]
            with self.lock:
                queue = self.queues[job]
                taken, queue[:] = queue[:size], queue[size:]
                again = [i for i in taken if i not in self.redelivered] if self.redeliver else []
                self.redelivered.update(again)
                queue.extend(again)
            body = {
                "tasks": [
                    {
                        "id": i,
                        "image_id": i,
                        "image_url": self.image_url(i),
                        "reply_subject": f"$JS.ACK.job_{job}.c.1.{i}",
                    }
                    for i in taken
                ]
            }
        elif kind == "result":
            results = json.loads(raw)["results"]
            entry["results"] = len(results)
            entry["errors"] = {r["result"]["image_id"] for r in results if "error" in r["result"]}
            time.sleep(self.delay_s)
            body = {"status": "accepted", "job_id": int(parts[3]), "results_queued": entry["results"]}
        with self.lock:
            self.requests.append(entry)
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("ANTENNA_TOKEN", TOKEN)
    monkeypatch.delenv("CONTEND_TOKEN", raising=False)


def records(out: Path) -> list[dict]:
    return list(read_records(out))


@pytest.mark.integration
def test_batched_post_sends_batch_x_concurrency_x_rounds_in_waves(tmp_path):
    with FakeAntenna() as app:
        summary = run_load(
            [BatchedPost(batch=7, concurrency=3, rounds=4, job=1)], LoadTarget(app.url), tmp_path
        )
    assert app.count("result") == 3 * 4
    assert sum(r["results"] for r in app.requests) == 7 * 3 * 4
    assert all(r["auth_ok"] for r in app.requests)
    assert summary.requests_ok == 12 and summary.requests_failed == 0 and summary.results_posted == 84
    assert summary.status == "ok"
    recs = records(tmp_path)
    assert len(recs) == 12
    assert all(list(r) == RECORD_KEYS for r in recs)
    assert {(r["kind"], r["status"], r["job"], r["results"], r["error"]) for r in recs} == {
        ("result", 200, 1, 7, None)
    }
    # A wave starts only when every POST of the previous wave has its response.
    for wave in range(2, 5):
        previous_end = max(r["t1"] for r in recs if r["wave"] == wave - 1)
        assert sum(r["wave"] == wave for r in recs) == 3
        assert min(r["t0"] for r in recs if r["wave"] == wave) >= previous_end
    assert all(r["t0"] <= r["t1"] and abs(r["t0"] - time.time()) < 120 for r in recs)


@pytest.mark.integration
def test_two_load_workers_give_the_same_totals_as_one(tmp_path):
    totals = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        with FakeAntenna() as app:
            summary = run_load(
                [BatchedPost(batch=5, concurrency=4, rounds=3, job=1)],
                LoadTarget(app.url),
                out,
                load_workers=workers,
            )
        recs = records(out)
        totals.append(
            (
                app.count("result"),
                sum(r["results"] for r in app.requests),
                summary.requests_ok,
                summary.results_posted,
                len(recs),
            )
        )
        assert len(list(out.glob("requests-*.jsonl"))) == workers  # one file per load worker, in this folder
        assert sorted(r["wave"] for r in recs) == [1] * 4 + [2] * 4 + [3] * 4
    assert totals[0] == totals[1] == (12, 60, 12, 60, 12)


@pytest.mark.integration
def test_token_is_in_no_file_and_no_command_line(tmp_path):
    with FakeAntenna(delay_s=0.05) as app:
        run = LoadRun(
            [BatchedPost(batch=2, concurrency=2, duration_s=2.5, job=1)],
            LoadTarget(app.url),
            tmp_path,
            load_workers=1,
        )
        run.start()
        try:
            seen = []
            while run.running():
                seen.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
                time.sleep(0.3)
            summary = run.wait()
        finally:
            run.stop()
    assert summary.requests_ok > 0 and all(r["auth_ok"] for r in app.requests)
    assert any("contend.load.child" in listing for listing in seen)
    assert not any(TOKEN in listing for listing in seen)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {
        "plan.json",
        "progress.json",
        "hub.log",
        "worker-0.log",
        "requests-w0.jsonl",
    }
    for path in files:
        assert TOKEN not in path.read_text(errors="replace"), path


@pytest.mark.integration
def test_a_token_in_the_target_reaches_the_load_but_not_contends_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTENNA_TOKEN")
    before = dict(os.environ)
    target = LoadTarget("http://127.0.0.1:9", token=SecretStr(TOKEN))
    assert read_token_for(target) == TOKEN
    assert TOKEN not in repr(target)
    assert TOKEN not in make_plan([BatchedPost(job=1)], target).model_dump_json()
    with FakeAntenna() as app:
        summary = run_load([BatchedPost(batch=2, concurrency=1, rounds=1, job=1)],
                           LoadTarget(app.url, token=SecretStr(TOKEN)), tmp_path)
    assert summary.requests_ok == 1 and all(r["auth_ok"] for r in app.requests)
    assert dict(os.environ) == before


@pytest.mark.parametrize(
    "make",
    [
        lambda url: run_load(
            [BatchedPost(job=1)], LoadTarget(url.replace("127.0.0.1", "antenna.invalid")), Path("x")
        ),
        lambda url: run_load(
            [BatchedPost(job=1)], LoadTarget(url, token_env="CONTEND_TEST_NO_SUCH_TOKEN"), Path("x")
        ),
        lambda url: run_load([BatchedPost()], LoadTarget(url), Path("x")),
        lambda url: run_load([BatchedPost(job=1, body="realistic")], LoadTarget(url), Path("x")),
        lambda url: run_load([PullWorkers()], LoadTarget(url), Path("x")),
        lambda url: run_load([], LoadTarget(url), Path("x")),
        lambda url: workload_from({"kind": "batched_post", "batch": 0}),
        lambda url: workload_from({"kind": "batched_post", "rounds": 2, "duration_s": 5}),
        lambda url: workload_from({"kind": "pull_workers", "pollers": -1}),
        lambda url: workload_from({"kind": "batched_post", "token": "abc"}),
    ],
)
def test_bad_inputs_are_one_line_errors_and_send_nothing(tmp_path, monkeypatch, make):
    monkeypatch.chdir(tmp_path)
    with FakeAntenna() as app:
        with pytest.raises(ConfigError) as bad:
            make(app.url)
        assert app.requests == []
    assert "\n" not in bad.value.message
    assert not (tmp_path / "x").exists()


def test_cli_refuses_remote_target_with_one_line_and_exit_2(tmp_path):
    done = contend("load", "batched-post", "--url", "http://antenna.invalid:8000", "--job", "1",
                   env={"ANTENNA_TOKEN": TOKEN}, cwd=tmp_path)
    assert done.returncode == 2
    assert (
        done.stderr.splitlines()[0]
        == "Error: refusing to send load to antenna.invalid: not a loopback address"
    )
    assert "Traceback" not in done.stderr and not (tmp_path / "reports").exists()


@pytest.mark.integration
def test_cli_prints_summary_table(tmp_path):
    env = {**os.environ, "ANTENNA_TOKEN": TOKEN}
    with FakeAntenna() as app:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "contend",
                "load",
                "batched-post",
                "--url",
                app.url,
                "--job",
                "1",
                "--batch",
                "3",
                "--concurrency",
                "2",
                "--rounds",
                "2",
                "--out",
                str(tmp_path / "run"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "result" in line and "│" in line)
    assert row.split("│")[2].strip() == "4" and row.split("│")[3].strip() == "0"
    assert "12 results posted" in done.stdout
    assert len(records(tmp_path / "run" / "load")) == 4


@pytest.mark.integration
def test_killed_run_keeps_complete_records_on_disk(tmp_path):
    with FakeAntenna(delay_s=0.02) as app:
        run = LoadRun(
            [BatchedPost(batch=2, concurrency=2, duration_s=60, job=1)],
            LoadTarget(app.url),
            tmp_path,
            load_workers=1,
        )
        run.start()
        try:
            wait_for(lambda: len(records(tmp_path)) >= 10, timeout=30)
            posted_before_kill = app.count("result")
            for proc in [run.hub, *run.workers]:
                os.killpg(proc.pid, signal.SIGKILL)
            for proc in [run.hub, *run.workers]:
                proc.proc.wait(10)
        finally:
            run.stop()
    recs = records(tmp_path)
    assert len(recs) >= 10
    # Records reach the disk every half second: what was on disk at the kill is at most ~1 s behind.
    assert len(recs) >= posted_before_kill - 2 * 50
    assert all(list(r) == RECORD_KEYS and r["status"] == 200 for r in recs)
    lines = (tmp_path / "requests-w0.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)


@pytest.mark.integration
def test_stop_event_ends_the_run_cleanly_and_keeps_records(tmp_path):
    stop = threading.Event()
    seen = []

    def progress(p):
        seen.append(p)
        if p.requests_ok >= 5:
            stop.set()

    with FakeAntenna(delay_s=0.02) as app:
        started = time.monotonic()
        summary = run_load(
            [BatchedPost(batch=2, concurrency=2, duration_s=120, job=1)],
            LoadTarget(app.url),
            tmp_path,
            progress=progress,
            stop=stop,
        )
    assert time.monotonic() - started < 60
    assert summary.status == "partial" and summary.requests_ok >= 5
    assert summary.requests_ok + summary.requests_failed == len(records(tmp_path))
    assert any(p.in_flight > 0 for p in seen) and seen[-1].state == "stopped"
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]


@pytest.mark.integration
def test_pull_workers_drain_jobs_and_count_redeliveries(tmp_path):
    workload = PullWorkers(
        pollers=2,
        loaders=2,
        batch_size=8,
        prefetch=2,
        cold_start_s=0.05,
        per_image_s=0.001,
        idle_sleep_s=0.2,
        duration_s=4,
    )
    with FakeAntenna(jobs={1: 40, 2: 24}, redeliver=True) as app:
        summary = run_load([workload], LoadTarget(app.url, pipeline_slug="moths"), tmp_path)
    recs = records(tmp_path)
    kinds = {r["kind"] for r in recs}
    assert kinds == {"poll", "tasks", "result"}
    assert summary.tasks_received == 2 * 64  # each task once, then once more (redelivered)
    assert summary.dup_tasks == 64
    assert summary.results_posted == 2 * 64 == sum(r["results"] for r in app.requests)
    assert summary.dup_results == 64
    assert summary.requests_failed == 0
    assert all(r["results"] <= 8 for r in recs if r["kind"] == "result")
    assert {r["worker"] for r in recs} == {"w0-u0", "w0-u1"}


@pytest.mark.integration
def test_pull_workers_load_images_without_the_token_and_post_an_error_result_for_each_failed_one(tmp_path):
    workload = PullWorkers(pollers=1, loaders=2, batch_size=6, prefetch=2, cold_start_s=0.05,
                           per_image_s=0.001, idle_sleep_s=0.2, duration_s=4, load_images=True,
                           image_threads=3)
    with FakeAntenna(jobs={1: 24}, images=True) as app:
        summary = run_load([workload], LoadTarget(app.url, pipeline_slug="moths"), tmp_path)
    recs = records(tmp_path)
    images = [r for r in recs if r["kind"] == "image"]
    assert len(images) == summary.tasks_received == 24
    served = [r for r in images if r["error"] is None]
    assert len(served) == 12 and all(r["recv"] == 4 + 256 * 40 and r["status"] == 200 for r in served)
    assert {r["error"] for r in images if r["error"] is not None} == {"ConnectError"}
    assert [r["auth"] for r in app.requests if r["kind"] == "image"] == [None] * 12  # no token to storage
    failed = set().union(*(r["errors"] for r in app.requests if r["kind"] == "result"))
    assert failed == {str(1000 + i) for i in range(1, 24, 2)}  # one error result per image not loaded
    assert summary.results_posted == 24


@pytest.mark.integration
def test_remote_load_worker_ships_its_records_to_the_master_folder(tmp_path):
    from contend.stack.process import free_port

    bind = f"127.0.0.1:{free_port()}"
    with FakeAntenna() as app:
        run = LoadRun(
            [BatchedPost(batch=4, concurrency=3, rounds=2, job=1)],
            LoadTarget(app.url),
            tmp_path / "master",
            remote_workers=1,
            master_bind=bind,
        )
        run.start()
        try:
            worker = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "contend",
                    "load-worker",
                    "--master",
                    bind,
                    "--out",
                    str(tmp_path / "w"),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "ANTENNA_TOKEN": TOKEN},
            )
            summary = run.wait()
        finally:
            run.stop()
    assert worker.returncode == 0, worker.stderr
    assert summary.requests_ok == app.count("result") == 6
    assert [p.name for p in (tmp_path / "master").glob("requests-*.jsonl")] == ["requests-w0.jsonl"]
    assert len(records(tmp_path / "master")) == 6
    assert not list((tmp_path / "w").glob("requests-*"))


@pytest.mark.integration
def test_stopped_pull_workers_send_nothing_more(tmp_path):
    stop = threading.Event()
    workload = PullWorkers(
        pollers=2, loaders=3, batch_size=2, prefetch=2, cold_start_s=0, per_image_s=0.01, duration_s=120
    )

    def progress(p):
        if p.requests_ok >= 20:
            stop.set()

    with FakeAntenna(jobs={1: 100000}) as app:
        summary = run_load(
            [workload], LoadTarget(app.url, pipeline_slug="moths"), tmp_path, progress=progress, stop=stop
        )
        # No load process is left once run_load returns, so nothing more can be sent.
        assert processes_mentioning(str(tmp_path)) == []
    assert summary.status == "partial"
    assert summary.requests_ok + summary.requests_failed == len(records(tmp_path)) >= 20
