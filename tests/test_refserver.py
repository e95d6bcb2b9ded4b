"""Contract of the reference server against real Postgres + NATS + the real web tier and workers.

One stack (preset pr-1261, 2 web processes, 2 workers, 10 jobs) is shared by the tests of this
module; tests whose flags must differ live in test_refserver_flags.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from contend.stack import RefServerOptions, Stack
from tests.conftest import wait_for

pytestmark = pytest.mark.integration  # every test here starts processes

APP_NAME = re.compile(r"^contend-ref:(?P<role>\S+) pid=(?P<pid>\d+) tid=(?P<tid>\d+) ntid=(?P<ntid>\d+)")

# Section 5 of the behaviour reference, verbatim: ids that do not exist are accepted by the view.
EXAMPLE_BODY: dict[str, Any] = {
    "results": [
        {
            "reply_subject": "$JS.ACK.job_42.job-42-consumer.1.7.7.1713790000000000000.93",
            "result": {
                "pipeline": "quebec_vermont_moths_2023",
                "total_time": 0.8,
                "source_images": [{"id": "5001", "url": "https://example.org/traps/5001.jpg"}],
                "detections": [
                    {
                        "source_image_id": "5001",
                        "bbox": {"x1": 12.0, "y1": 30.5, "x2": 96.0, "y2": 140.0},
                        "algorithm": {"name": "Example detector", "key": "example_detector"},
                        "timestamp": "2026-04-22T10:15:00",
                        "classifications": [
                            {
                                "classification": "Example species",
                                "scores": [0.87],
                                "algorithm": {"name": "Example classifier", "key": "example_classifier"},
                                "terminal": True,
                                "timestamp": "2026-04-22T10:15:01",
                            }
                        ],
                    }
                ],
            },
        },
        {
            "reply_subject": "$JS.ACK.job_42.job-42-consumer.1.8.8.1713790000000000000.92",
            "result": {"error": "failed to load image", "image_id": "5002"},
        },
    ]
}


@contextlib.contextmanager
def refstack(folder: Path, **options: Any) -> Iterator[Stack]:
    with Stack(folder, refserver=RefServerOptions(**options)) as stack:
        yield stack


class Api:
    """A client of one reference server, with its token."""

    def __init__(self, stack: Stack) -> None:
        info = stack.info()["refserver"]
        self.info = info
        self.dsn = stack.dsn
        self.run_dir = stack.run_dir
        assert stack.nats is not None
        self.nats_monitor = stack.nats.monitor_url
        self.client = httpx.Client(base_url=info["url"] + "/api/v2",
                                   headers={"Authorization": f"Token {info['token']}"}, timeout=60)

    def jobs(self, **params: Any) -> dict[str, Any]:
        response = self.client.get("/jobs/", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def tasks(self, job: int, batch_size: int) -> list[dict[str, Any]]:
        response = self.client.post(f"/jobs/{job}/tasks/", json={"batch_size": batch_size})
        assert response.status_code == 200, response.text
        return response.json()["tasks"]

    def result(self, job: int, body: dict[str, Any], **kw: Any) -> httpx.Response:
        return self.client.post(f"/jobs/{job}/result/", json=body, **kw)

    def consumer(self, job: int) -> dict[str, Any]:
        """Return the NATS monitoring view of the job's task consumer."""
        data = httpx.get(f"{self.nats_monitor}/jsz", params={"consumers": "true"}).json()
        for stream in data["account_details"][0]["stream_detail"]:
            for consumer in stream.get("consumer_detail", []):
                if consumer["name"] == f"job-{job}-consumer":
                    return consumer
        raise AssertionError(f"no consumer for job {job}")

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()


def error_results(prefix: str, n: int) -> dict[str, Any]:
    """A body like Antenna's load script sends: error results with fake image ids and reply subjects."""
    return {"results": [{"reply_subject": f"{prefix}.r{i}.deadbeef",
                         "result": {"error": "load-test", "image_id": f"img-{prefix}-{i}"}}
                        for i in range(n)]}


def table_counter(api: Api, table: str, column: str) -> int:
    return int(api.sql(f"SELECT {column} FROM pg_stat_user_tables WHERE relname = %s", table)[0][0])


def settled(api: Api, table: str, column: str, quiet: float = 1.5, timeout: float = 60.0) -> int:
    """Return a statistics counter once it has stopped moving for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = table_counter(api, table, column), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = table_counter(api, table, column)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    pytest.fail(f"{table}.{column} kept changing for {timeout} s")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    started = time.monotonic()
    with refstack(tmp_path_factory.mktemp("ref"), preset="pr-1261", web_concurrency=2, worker_concurrency=2,
                  jobs=10, images_per_job=4) as stack:
        client = Api(stack)
        client.info["startup_s"] = time.monotonic() - started
        yield client
        client.client.close()


def test_stack_info_names_everything_a_sampler_needs(api):
    info = api.info
    assert info["url"].startswith("http://127.0.0.1:")
    assert re.fullmatch(r"[0-9a-f]{40}", info["token"])
    assert len(info["job_ids"]) == 10
    assert info["pipeline_slug"] == "quebec_vermont_moths_2023"
    assert info["flags"]["PROGRESS_LOCK"] == "none" and info["flags"]["WEB_CONCURRENCY"] == "2"
    assert len(info["pids"]["web"]) == 2 and len(info["pids"]["workers"]) == 2
    assert info["startup_s"] < 60


def test_fixtures_are_started_async_jobs_with_one_task_per_image(api):
    rows = api.sql("SELECT status, dispatch_mode, progress FROM jobs_job ORDER BY id")
    assert [(r[0], r[1]) for r in rows] == [("STARTED", "async_api")] * 10
    collect = rows[0][2]["stages"][0]
    assert collect["key"] == "collect" and collect["params"][0]["value"] == 4
    detail = api.client.get(f"/jobs/{api.info['job_ids'][9]}/").json()
    assert detail["status"] == "STARTED" and detail["pipeline_slug"] == "quebec_vermont_moths_2023"
    assert set(detail["logs"]) == {"stdout", "stderr"}


def test_example_body_and_error_body_are_accepted_with_antennas_shape(api):
    job = api.info["job_ids"][0]
    for body in (EXAMPLE_BODY, error_results("contract", 3)):
        response = api.result(job, body)
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["status"] == "accepted" and data["job_id"] == job
        assert data["results_queued"] == len(body["results"])
        assert [t["reply_subject"] for t in data["tasks"]] == [r["reply_subject"] for r in body["results"]]
        assert all(t["status"] == "queued" and t["task_id"] for t in data["tasks"])


def test_real_tasks_round_trip_saves_detections_and_acks(api):
    job = api.info["job_ids"][1]
    tasks = api.tasks(job, 2)
    assert len(tasks) == 2
    assert all(t["reply_subject"].startswith(f"$JS.ACK.job_{job}.job-{job}-consumer.1.") for t in tasks)
    ok, failed = tasks
    result = json.loads(json.dumps(EXAMPLE_BODY["results"][0]["result"]))
    result["source_images"] = [{"id": ok["image_id"], "url": ok["image_url"]}]
    result["detections"][0]["source_image_id"] = ok["image_id"]

    def process_counts() -> dict[str, int]:
        process = api.sql("SELECT progress FROM jobs_job WHERE id = %s", job)[0][0]["stages"][1]
        return {p["key"]: p["value"] for p in process["params"]}

    # One result at a time. Two results in flight go to the two result workers at once, and under
    # PROGRESS_LOCK=none (this stack's preset) the job row keeps whichever worker wrote last, with
    # the counts that worker read, possibly before the other's result: "processed 1, remaining 3".
    # That lost update is what the preset reproduces (test_sample_final measures it), not a promise.
    assert api.result(job, {"results": [{"reply_subject": ok["reply_subject"], "result": result}]}
                      ).status_code == 200
    # Acked at the very end of the result task, after its progress writes committed.
    wait_for(lambda: api.consumer(job)["num_ack_pending"] == 1, timeout=30)
    assert process_counts() == {"processed": 1, "remaining": 3, "failed": 0}
    error = {"error": "failed to load image", "image_id": failed["image_id"]}
    assert api.result(job, {"results": [{"reply_subject": failed["reply_subject"], "result": error}]}
                      ).status_code == 200
    wait_for(lambda: api.consumer(job)["num_ack_pending"] == 0, timeout=30)
    assert process_counts() == {"processed": 2, "remaining": 2, "failed": 1}
    assert api.consumer(job)["ack_floor"]["stream_seq"] >= 2
    assert api.sql("SELECT count(*) FROM main_detection d "
                   "JOIN main_classification c ON c.detection_id = d.id "
                   "WHERE d.source_image_id = %s", int(ok["image_id"]))[0][0] == 1
    # Both messages were acked, so the two other images are all that is left to hand out.
    rest = api.tasks(job, 10)
    assert len(rest) == 2 and not {t["image_id"] for t in rest} & {ok["image_id"], failed["image_id"]}


@pytest.mark.parametrize(("path", "body", "field"), [
    ("result", {}, "results"),
    ("tasks", {}, "batch_size"),
    ("tasks", {"batch_size": 0}, "batch_size"),
])
def test_invalid_bodies_give_400(api, path, body, field):
    response = api.client.post(f"/jobs/{api.info['job_ids'][2]}/{path}/", json=body)
    assert response.status_code == 400
    assert field in response.json()


def test_an_invalid_result_entry_gives_pydantic_style_errors(api):
    body = {"results": [{"reply_subject": "x", "result": {"error": "e", "image_id": "1"}},
                        {"result": {"error": "e", "image_id": "2"}}]}
    response = api.result(api.info["job_ids"][2], body)
    assert response.status_code == 400
    assert response.json() == {"results": [{"loc": [1, "reply_subject"], "msg": "field required",
                                            "type": "value_error.missing"}]}
    assert api.client.post(f"/jobs/{api.info['job_ids'][2]}/tasks/", json={"batch_size": 0}).json() == {
        "batch_size": ["Ensure this value is greater than or equal to 1."]}


def test_non_json_bodies_give_400_or_415_as_drf_parsers_do(api):
    path = f"/jobs/{api.info['job_ids'][2]}/result/"
    response = api.client.post(path, content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error")
    response = api.client.post(path, content=b"results", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert response.json() == {"detail": 'Unsupported media type "text/plain" in request.'}


def test_an_unknown_job_gives_drfs_404_body(api):
    for response in (api.client.get("/jobs/999999/"),
                     api.client.post("/jobs/999999/tasks/", json={"batch_size": 1}),
                     api.result(999999, error_results("missing", 1))):
        assert response.status_code == 404
        assert response.json() == {"detail": "Not found."}


def test_tasks_of_a_job_that_is_not_async_answer_drfs_bare_list(api):
    job = api.sql("INSERT INTO jobs_job (created_at, updated_at, name, queue, status, progress, logs, delay,"
                  " shuffle, job_type_key, project_id, pipeline_id, dispatch_mode) SELECT now(), now(),"
                  " 'internal job', queue, status, progress, logs, delay, shuffle, job_type_key, project_id,"
                  " pipeline_id, 'internal' FROM jobs_job WHERE id = %s RETURNING id",
                  api.info["job_ids"][2])[0][0]
    try:
        response = api.client.post(f"/jobs/{job}/tasks/", json={"batch_size": 1})
    finally:
        api.sql("DELETE FROM jobs_job WHERE id = %s RETURNING id", job)  # the other tests count the jobs
    assert response.status_code == 400
    assert response.json() == ["Only async_api jobs have fetchable tasks"]


def test_reads_are_allowed_without_a_token_writes_are_not(api):
    anonymous = httpx.Client(base_url=api.info["url"] + "/api/v2", timeout=30)
    assert anonymous.get("/jobs/", params={"ids_only": 1}).status_code == 200
    assert anonymous.get("/projects/").json()["results"][0]["id"] == api.info["project_id"]
    response = anonymous.post(f"/jobs/{api.info['job_ids'][2]}/tasks/", json={"batch_size": 1})
    assert response.status_code == 401


@pytest.mark.parametrize(("headers", "detail", "get_status"), [
    ({}, "Authentication credentials were not provided.", 200),
    ({"Authorization": "Token " + "0" * 40}, "Invalid token.", 401),
    ({"Authorization": "Bearer abc"}, "Authentication credentials were not provided.", 200),
])
def test_missing_or_wrong_token_gives_401(api, headers, detail, get_status):
    job = api.info["job_ids"][2]
    assert httpx.get(api.info["url"] + "/api/v2/jobs/", headers=headers).status_code == get_status
    for path in (f"/jobs/{job}/result/", f"/jobs/{job}/tasks/"):
        response = httpx.post(api.info["url"] + "/api/v2" + path, headers=headers,
                              json=error_results("auth", 1))
        assert response.status_code == 401
        assert response.json() == {"detail": detail}
        assert response.headers["WWW-Authenticate"] == "Token"


def test_list_envelope_filters_and_slash_handling(api):
    page = api.client.get("/jobs", params={"pipeline__slug__in": "quebec_vermont_moths_2023,other",
                                           "ids_only": 1, "incomplete_only": 1, "dispatch_mode": "async_api"})
    assert page.status_code == 200
    data = page.json()
    assert set(data) == {"count", "next", "previous", "results", "user_permissions"}
    # Job 0 got mostly failed results from other tests: its results stage is FAILURE, so not incomplete.
    incomplete = api.sql("SELECT count(*) FROM jobs_job WHERE NOT progress @> "
                         "'{\"stages\": [{\"key\": \"results\", \"status\": \"FAILURE\"}]}'")[0][0]
    assert data["count"] == incomplete and len(data["results"]) == 1  # PR #1261: limit 1 by default
    assert set(data["results"][0]) == {"id", "pipeline_slug", "user_permissions"}
    assert "limit=1" in data["next"] and "offset=1" in data["next"]
    assert api.jobs(ids_only=1, limit=20)["count"] == 10
    assert api.jobs(ids_only=1, pipeline__slug__in="other")["count"] == 0
    assert api.jobs(ids_only=1, dispatch_mode="internal")["count"] == 0
    full = api.jobs(limit=3)
    assert len(full["results"]) == 3 and "progress" in full["results"][0]


def test_incomplete_only_excludes_a_job_whose_results_stage_is_final(api):
    job = api.info["job_ids"][8]
    before = {r["id"] for r in api.jobs(ids_only=1, incomplete_only=1, limit=20)["results"]}
    api.sql("UPDATE jobs_job SET progress = jsonb_set(progress, '{stages,2,status}', '\"SUCCESS\"') "
            "WHERE id = %s RETURNING id", job)
    ids = {r["id"] for r in api.jobs(ids_only=1, incomplete_only=1, limit=20)["results"]}
    assert job in before and ids == before - {job}
    assert job in {r["id"] for r in api.jobs(ids_only=1, limit=20)["results"]}
    api.sql("UPDATE jobs_job SET progress = jsonb_set(progress, '{stages,2,status}', '\"STARTED\"') "
            "WHERE id = %s RETURNING id", job)


def test_random_order_with_limit_1_spreads_polls(api):
    seen = [api.jobs(ids_only=1, incomplete_only=1)["results"][0]["id"] for _ in range(20)]
    assert len(set(seen)) >= 5


def test_timed_out_client_does_not_abort_the_server_transaction(api):
    """Hold the job row; a POST that times out on the client must still commit later.

    While it waits, its backend (and a worker's) carry application names that point at the
    process and thread a sampler should look at.
    """
    job = api.info["job_ids"][3]
    marker = f"timeout-{time.monotonic_ns()}"
    with psycopg.connect(api.dsn) as holder:
        holder.execute("SELECT id FROM jobs_job WHERE id = %s FOR UPDATE", (job,))
        with pytest.raises(httpx.ReadTimeout):
            api.result(job, error_results(marker, 1), timeout=1.5)

        def waiting() -> list[str]:
            rows = api.sql("SELECT application_name FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                           "AND application_name LIKE 'contend-ref:%%'")
            roles = [r[0] for r in rows]
            return roles if any(":web " in r for r in roles) and any(":worker-" in r for r in roles) else []

        names = wait_for(waiting, timeout=30)
        for name in names:
            match = APP_NAME.match(name)
            assert match, name
            tier = "web" if match["role"] == "web" else "workers"
            assert match["role"] == "web" or re.fullmatch(r"worker-\d+", match["role"])
            assert int(match["pid"]) in api.info["pids"][tier]
        holder.rollback()

    def committed() -> bool:
        logs = api.sql("SELECT logs FROM jobs_job WHERE id = %s", job)[0][0]["stdout"]
        return any(f"reply_subject={marker}.r0.deadbeef" in line for line in logs)

    wait_for(committed, timeout=30)


def test_token_is_in_no_log_file(api):
    logs = list(api.run_dir.glob("**/*.log"))
    assert any("refserver-web-0" in p.name for p in logs) and any("refserver-worker-" in p.name for p in logs)
    for path in logs:
        assert api.info["token"] not in path.read_text(errors="replace"), path


def test_fixture_command_creates_started_jobs_with_their_tasks(tmp_path):
    """The management command wraps create_fixtures; its token comes from the environment."""
    import os
    import subprocess
    import sys

    token = "ab" * 20
    with Stack(tmp_path / "stack") as stack:
        env = {**os.environ, "CONTEND_REF_DSN": stack.dsn, "CONTEND_REF_NATS": stack.nats_url,
               "CONTEND_REF_TOKEN": token}
        manage = [sys.executable, "-m", "contend.refserver", "manage"]
        subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True, capture_output=True)
        out = subprocess.run([*manage, "contend_fixtures", "--jobs", "2", "--images", "3"], env=env,
                             check=True, capture_output=True, text=True).stdout
        made = json.loads(out.strip().splitlines()[-1])
        assert len(made["job_ids"]) == 2 and made["pipeline_slug"] == "quebec_vermont_moths_2023"
        with psycopg.connect(stack.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM jobs_job WHERE status = 'STARTED' "
                                "AND dispatch_mode = 'async_api'").fetchone()[0] == 2
            assert conn.execute("SELECT count(*) FROM main_sourceimage").fetchone()[0] == 6
            tokens = conn.execute("SELECT count(*) FROM authtoken_token WHERE key = %s", (token,)).fetchone()
            assert tokens[0] == 1
            assert conn.execute("SELECT array_agg(a.key ORDER BY a.key) FROM ml_algorithm a "
                                "JOIN ml_pipeline_algorithms pa ON pa.algorithm_id = a.id").fetchone()[0] == [
                "example_classifier", "example_detector"]
        assert stack.nats is not None
        streams = httpx.get(f"{stack.nats.monitor_url}/jsz",
                            params={"streams": "true", "config": "true"}).json()
        found = {s["name"]: s for s in streams["account_details"][0]["stream_detail"]}
        for job in made["job_ids"]:
            assert found[f"job_{job}"]["state"]["messages"] == 3
            assert found[f"job_{job}"]["config"]["subjects"] == [f"job.{job}.tasks"]


def test_contend_up_prints_url_token_and_job_ids_and_stops_cleanly(tmp_path):
    import os
    import signal
    import subprocess
    import threading

    from tests.conftest import CONTEND, stack_processes

    proc = subprocess.Popen([*CONTEND, "up", "--reports", str(tmp_path), "--preset", "pre-1261",
                             "--jobs", "2", "--images", "3", "--workers", "1", "--flag", "NATS_TASK_TTR=7"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # each line as it is printed
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        # stack.json is written before the summary is printed: wait for the summary's last line.
        wait_for(lambda: "Press Ctrl-C to stop.\n" in lines, timeout=120)
        stack_json = next(tmp_path.glob("up-*/stack.json"))
        ref = json.loads(stack_json.read_text())["refserver"]
        assert ref["flags"]["NATS_TASK_TTR"] == "7" and ref["flags"]["PROGRESS_LOCK"] == "select_for_update"
        assert len(ref["job_ids"]) == 2 and len(ref["pids"]["workers"]) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode in (0, 130)
    assert ref["url"] in out and ref["token"] in out and ref["images_url"] in out
    assert f"jobs      {', '.join(map(str, ref['job_ids']))}" in out
    assert stack_processes(stack_json.parent) == []


def test_a_registered_pipeline_accepts_results_of_its_own_algorithms(api):
    """An unchanged ADC worker registers its pipeline, then posts results named after its own models.

    Last in the module: the registration replaces the pipeline's example detector."""
    job = api.info["job_ids"][3]
    registration = {"processing_service_name": "adc-worker on gpu-1", "pipelines": [{
        "name": "Quebec & Vermont moths", "slug": api.info["pipeline_slug"], "version": 1,
        "algorithms": [{"name": "Moth detector", "key": "moth_detector_2024", "task_type": "localization"},
                       {"name": "Species classifier", "key": "qv_moths_2023",
                        "task_type": "classification"}]}]}
    response = api.client.post(f"/projects/{api.info['project_id']}/pipelines/", json=registration)
    assert response.status_code == 201
    assert set(response.json()["pipelines_created"]) == {"moth_detector_2024", "qv_moths_2023"}
    task = api.tasks(job, 1)[0]
    image = task["image_id"]
    result = {"pipeline": api.info["pipeline_slug"], "total_time": 0.1,
              "source_images": [{"id": image, "url": task["image_url"]}],
              "detections": [{"source_image_id": image, "bbox": {"x1": 1, "y1": 2, "x2": 3, "y2": 4},
                              "algorithm": {"name": "Moth detector", "key": "moth_detector_2024"},
                              "timestamp": "2026-04-22T10:15:00",
                              "classifications": [{"classification": "sp", "scores": [0.9],
                                                   "algorithm": {"name": "c", "key": "qv_moths_2023"},
                                                   "timestamp": "2026-04-22T10:15:01"}]}]}
    body = {"results": [{"reply_subject": task["reply_subject"], "result": result}]}
    assert api.result(job, body).status_code == 200
    wait_for(lambda: api.sql("SELECT count(*) FROM main_classification c JOIN main_detection d"
                             " ON d.id = c.detection_id WHERE d.source_image_id = %s", int(image))[0][0] == 1,
             timeout=60)
