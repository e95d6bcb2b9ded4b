"""What an unchanged ADC worker needs from the reference server: images it can fetch, task fetches that
answer ``{"tasks": []}`` when nothing is left (never 503), and registration answers as Antenna's.

One stack (1 web process, 1 worker, 2 jobs of 6 images) is shared by the tests of this module but
the last one, which stops the NATS of a stack of its own.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime

import httpx
import pytest
from PIL import Image

from tests.test_refserver import Api, refstack

pytestmark = pytest.mark.integration  # every test here starts processes

CONCURRENT_FETCHES = 20
ROUNDS = 100


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with refstack(tmp_path_factory.mktemp("adc"), preset="pr-1261", web_concurrency=1, worker_concurrency=1,
                  jobs=2, images_per_job=6) as stack:
        client = Api(stack)
        client.stack = stack  # type: ignore[attr-defined]
        yield client
        client.client.close()


def drain(api: Api, job: int) -> list[dict]:
    """Reserve every task of ``job``; return them (they stay handed out: nothing acks them)."""
    tasks: list[dict] = []
    while batch := api.tasks(job, 100):
        tasks += batch
    return tasks


def test_every_image_url_of_a_job_answers_a_jpeg_with_the_storage_headers(api):
    tasks = drain(api, api.info["job_ids"][0])
    assert len(tasks) == 6
    assert api.info["images_url"].startswith("http://127.0.0.1:")
    with httpx.Client(timeout=30) as storage:
        bodies = set()
        for task in tasks:
            url = task["image_url"]
            assert url.startswith(api.info["images_url"]) and url != api.info["images_url"]
            response = storage.get(url)  # no token: a worker fetches images without one
            assert response.status_code == 200, url
            body = response.content
            assert response.headers["content-type"] == "image/jpeg"
            assert int(response.headers["content-length"]) == len(body) > 100_000
            assert response.headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'
            assert parsedate_to_datetime(response.headers["last-modified"]).tzinfo is not None
            with Image.open(io.BytesIO(body)) as picture:
                assert picture.format == "JPEG" and picture.size == (1920, 1080)
                picture.load()  # the whole image decodes, not only its header
            assert storage.get(url).content == body  # the same key, the same bytes
            bodies.add(body)
        assert len(bodies) > 1  # not one picture for every image
        etag = response.headers["etag"]
        assert storage.get(url, headers={"If-None-Match": etag}).status_code == 304
        head = storage.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == response.headers["content-length"]
        missing = storage.get(api.info["images_url"] + "trap-0/nothing.png")
        assert missing.status_code == 404 and b"NoSuchKey" in missing.content


@pytest.mark.slow  # 2000 fetches of 0.5 s each, 20 at a time: about 80 s
def test_concurrent_fetches_on_a_job_whose_tasks_are_all_handed_out_answer_empty_never_503(api):
    job = api.info["job_ids"][1]
    assert len(drain(api, job)) == 6

    def fetch(client: httpx.Client) -> tuple[int, str]:
        response = client.post(f"/jobs/{job}/tasks/", json={"batch_size": 24})
        return response.status_code, response.text

    limits = httpx.Limits(max_connections=CONCURRENT_FETCHES, max_keepalive_connections=CONCURRENT_FETCHES)
    with httpx.Client(base_url=api.info["url"] + "/api/v2", limits=limits, timeout=60,
                      headers={"Authorization": f"Token {api.info['token']}"}) as client, \
            ThreadPoolExecutor(CONCURRENT_FETCHES) as pool:
        for n in range(ROUNDS):
            answers = list(pool.map(fetch, [client] * CONCURRENT_FETCHES))
            assert [status for status, _ in answers] == [200] * CONCURRENT_FETCHES, (n, answers)
            assert {text for _, text in answers} == {'{"tasks": []}'}, (n, answers)
    web_log = (api.run_dir / "refserver" / "refserver-web-0.log").read_text()
    assert "Task queue unavailable" not in web_log


# Antenna's PipelineRegistrationResponse (ami/ml/schemas.py) echoes the configs as its
# PipelineConfigResponse and AlgorithmConfigResponse parse them: every field, defaults filled in.
ALGORITHM_DEFAULTS = {"description": None, "task_type": None, "version": 1, "version_name": None, "uri": None,
                      "category_map": None}
PIPELINE_DEFAULTS = {"description": None, "algorithms": [], "stages": []}


def register(api: Api, project: int, pipelines: list[dict]) -> dict:
    body = {"processing_service_name": "adc-worker on gpu-2", "pipelines": pipelines}
    response = api.client.post(f"/projects/{project}/pipelines/", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_registration_lists_what_antennas_create_pipelines_lists(api):
    """pipelines_created: a pipeline not yet enabled for the project, and each algorithm newly attached
    to a pipeline (ProcessingService.create_pipelines appends both there); algorithms_created: empty."""
    project = api.info["project_id"]
    detector = {"name": "Moth detector", "key": "adc_detector_2025", "task_type": "localization"}
    classifier = {"name": "Moth classifier", "key": "adc_classifier_2025", "task_type": "classification",
                  "category_map": {"labels": ["moth", "not a moth"], "data": [{"label": "moth", "index": 0}]}}
    new = {"name": "ADC moths", "slug": "adc_moths_2025", "version": 1, "algorithms": [detector, classifier],
           "stages": [{"key": "detect", "name": "Detect"}]}

    first = register(api, project, [new])
    assert set(first) == {"timestamp", "success", "error", "pipelines", "pipelines_created",
                          "algorithms_created"}
    assert first["success"] is True and first["error"] is None
    assert first["pipelines_created"] == ["adc_moths_2025", "adc_detector_2025", "adc_classifier_2025"]
    assert first["algorithms_created"] == []
    echoed = first["pipelines"][0]
    assert echoed["algorithms"][0] == ALGORITHM_DEFAULTS | detector
    assert echoed["algorithms"][1]["category_map"] == {
        "data": [{"label": "moth", "index": 0}], "labels": ["moth", "not a moth"], "version": None,
        "description": None, "uri": None}
    assert echoed["stages"] == [{"key": "detect", "name": "Detect", "params": [], "description": None}]
    assert set(echoed) == {"name", "slug", "version", *PIPELINE_DEFAULTS} and echoed["description"] is None

    # Registered again, unchanged: nothing is new.
    assert register(api, project, [new])["pipelines_created"] == []
    # One more algorithm on the known pipeline: only its key.
    extra = {"name": "Binary filter", "key": "adc_binary_2025", "task_type": "classification"}
    again = register(api, project, [{**new, "algorithms": [detector, classifier, extra]}])
    assert again["pipelines_created"] == ["adc_binary_2025"] and again["algorithms_created"] == []

    # A known pipeline enabled for another project is listed for that project.
    other = api.sql("INSERT INTO main_project (name, created_at, updated_at) VALUES ('second', now(), now())"
                    " RETURNING id")[0][0]
    assert register(api, other, [new])["pipelines_created"] == ["adc_moths_2025"]
    assert register(api, other, [new])["pipelines_created"] == []


def test_a_task_fetch_answers_503_when_nats_is_down_and_the_log_line_names_the_cause(tmp_path):
    """Its own stack, whose NATS it stops. Antenna connects with the same options (connect_timeout
    5 s, allow_reconnect off) and nats-py's 60 attempts 2 s apart, so it answers after 2 minutes;
    NATS_CONNECT_ATTEMPTS=3 gives the same answer after 4 s."""
    with refstack(tmp_path, preset="pr-1261", web_concurrency=1, worker_concurrency=1, jobs=1,
                  images_per_job=2, flags={"NATS_CONNECT_ATTEMPTS": "3"}) as stack:
        api = Api(stack)
        job = api.info["job_ids"][0]
        assert stack.nats is not None
        stack.nats.stop()
        response = api.client.post(f"/jobs/{job}/tasks/", json={"batch_size": 4}, timeout=300)
        api.client.close()
    assert response.status_code == 503
    assert response.json() == {"error": "Task queue temporarily unavailable"}
    web_log = (api.run_dir / "refserver" / "refserver-web-0.log").read_text()
    line = next(line for line in web_log.splitlines() if "Task queue unavailable while fetching" in line)
    assert line.split("fetching tasks: ", 1)[1] == "NoServersError: nats: no servers available for connection"
