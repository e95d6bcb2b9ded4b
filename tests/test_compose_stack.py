"""docker-compose.repro.yml for real: one `up` under docker compose or podman-compose, then down -v.

Skipped when neither engine can run containers here, and under podman when the base images are
not on the machine (a machine without a registry builds stand-ins for them first). The project
name and the published ports are the test's own, so that a stack someone else runs is not touched.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import psycopg
import pytest

from contend.load.bodies import error_entries, results_body
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ["sh", str(ROOT / "scripts" / "compose.sh")]
BASE_IMAGES = ("python:3.11-slim", "postgres:16", "nats:2.10-alpine")


def _ok(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def engine() -> tuple[str, str]:
    """Return (the COMPOSE command, the engine's CLI) that can run the stack here, else skip."""
    if shutil.which("docker") and _ok(["docker", "compose", "version"]) and _ok(["docker", "info"]):
        return "docker compose", "docker"
    if shutil.which("podman-compose") and shutil.which("podman"):
        missing = [image for image in BASE_IMAGES if not _ok(["podman", "image", "exists", image])]
        if missing:
            pytest.skip(f"podman has no {', '.join(missing)} (no registry here: build local stand-ins first)")
        # podman-compose says nothing when its containers cannot start (an OCI runtime that fails on
        # this machine): they stay "Created" and up exits 0. Ask the engine to run one first.
        if not _ok(["podman", "run", "--rm", "--pull=never", BASE_IMAGES[0], "true"]):
            pytest.skip(f"podman cannot start a container here ({BASE_IMAGES[0]}): check its OCI runtime "
                        "(CONTAINERS_CONF with runtime = runc where crun fails)")
        return "podman-compose", "podman"
    pytest.skip("neither docker compose (with an engine) nor podman-compose is installed")


def free_port() -> int:
    """Return a free loopback port below the ephemeral range (where a client's port could take it)."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def leftovers(cli: str, project: str) -> dict[str, list[str]]:
    """Return the containers, volumes and networks that still carry the project's label."""
    label = f"label=com.docker.compose.project={project}"
    found = {}
    for kind, argv in (("containers", [cli, "ps", "-a", "-q"]), ("volumes", [cli, "volume", "ls", "-q"]),
                       ("networks", [cli, "network", "ls", "-q"])):
        out = subprocess.run([*argv, "--filter", label], capture_output=True, text=True, timeout=60)
        found[kind] = out.stdout.split()
    return found


def test_one_up_starts_the_stack_and_down_leaves_nothing(tmp_path: Path) -> None:
    compose, cli = engine()
    project = f"contend-test-{os.getpid()}"
    web_port, pg_port = free_port(), free_port()
    token = secrets.token_hex(20)
    env = {**os.environ, "COMPOSE": compose, "CONTEND_COMPOSE_PROJECT": project, "CONTEND_REF_TOKEN": token,
           "CONTEND_WEB_PORT": str(web_port), "CONTEND_PG_PORT": str(pg_port),
           "IMAGES": "20", "ML_WORKER_CONCURRENCY": "2", "JOB_LOG_PERSIST_ENABLED": "false"}

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*COMPOSE, *args], capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=tmp_path)  # the script finds the compose file from its own folder

    try:
        up = run("up", "-d", "--build")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        base = f"http://127.0.0.1:{web_port}"

        def answers() -> bool:
            try:
                return httpx.get(f"{base}/api/v2/jobs", timeout=5).is_success
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout=300, interval=1)
        # setup's JSON: the job ids, and where the host reaches the API and Postgres
        out = run("exec", "-T", "web", "cat", "/run/contend/setup.json", timeout=120)
        setup = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
        assert setup["job_ids"] == [1]
        assert setup["base_url"] == base
        assert setup["dsn"] == f"postgresql://postgres@127.0.0.1:{pg_port}/contend"
        assert setup["token_env"] == "CONTEND_REF_TOKEN"
        job = setup["job_ids"][0]
        assert httpx.get(f"{base}/api/v2/jobs/{job}", timeout=10).json()["status"] == "STARTED"

        body = results_body(error_entries("compose", 2, random.Random(1)))
        headers = {"Content-Type": "application/json"}
        refused = httpx.post(f"{base}/api/v2/jobs/{job}/result/", content=body, headers=headers, timeout=30)
        assert refused.status_code == 401
        accepted = httpx.post(f"{base}/api/v2/jobs/{job}/result/", content=body, timeout=30,
                              headers={**headers, "Authorization": f"Token {token}"})
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["results_queued"] == 2

        # Postgres on the host's loopback, with setup's migrations and the job in it
        with psycopg.connect(setup["dsn"], autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT status FROM jobs_job WHERE id = %s", (job,)).fetchone()
        assert row == ("STARTED",)
    finally:
        down = run("down", "-v", timeout=300)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    assert leftovers(cli, project) == {"containers": [], "volumes": [], "networks": []}
