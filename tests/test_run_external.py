"""`contend run` on an external target: load to a server contend did not start, samplers on its Postgres.

The user's server is tests/data/tiny_target.py (a real HTTP server), started and stopped by the
test; the samplers watch the shared test Postgres through the variable the scenario names, with a
password in the DSN. Neither the token nor the password reaches any file of the run folder.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from contend.run import run_scenario
from contend.scenario import parse_scenario
from contend.stack import Stack
from contend.stack.process import free_port
from tests.conftest import wait_for
from tests.test_command import TINY, _group

pytestmark = pytest.mark.integration  # starts the tiny server, the samplers and the load

SCENARIO = """\
name: outside
target:
  kind: external
  base_url: http://127.0.0.1:{port}
  token_env: OUTSIDE_TOKEN
  dsn_env: OUTSIDE_DSN
workloads:
  - {{kind: batched_post, batch: 2, concurrency: 2, duration_s: 2, timeout_s: 10, job: 7}}
warm_up_s: 0
drain_wait_s: 0.5
cool_down_s: 0
sampling: {{pyspy: false, nats: false}}
"""
TOKEN = "outside-token-value-5678"
PASSWORD = "outside-pw-9012"  # the test Postgres trusts loopback, so any password connects


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    """The tiny server on a free loopback port; its whole process group is killed afterwards."""
    port = free_port()
    (tmp_path / "tiny").mkdir()
    proc = subprocess.Popen([sys.executable, TINY, str(port), str(tmp_path / "tiny")], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for((tmp_path / "tiny" / "up.json").exists, timeout=30)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: not _group(proc.pid), timeout=20)


def test_an_external_target_is_loaded_and_its_postgres_sampled(tmp_path: Path, stack: Stack, server: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTSIDE_TOKEN", TOKEN)
    dsn = stack.dsn.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    assert PASSWORD in dsn
    monkeypatch.setenv("OUTSIDE_DSN", dsn)
    result = run_scenario(parse_scenario(SCENARIO.format(port=server)), tmp_path / "reports")
    assert result.status == "complete"
    variant = result.run_dir / "variants" / "default"
    meta = json.loads((variant / "meta.json").read_text())
    assert meta["status"] == "ok", meta.get("reason")
    assert meta["phases"]["drain"]["method"] == "fixed"
    ticks = (variant / "samples" / "pg_ticks.jsonl").read_text().splitlines()
    assert len(ticks) >= 10, "the Postgres sampler ticked through the load at 10 Hz"
    summary = json.loads((result.run_dir / "summary.json").read_text())
    metrics = summary["variants"]["default"]["metrics"]
    assert metrics["posts_total"] > 0 and metrics["post_ok_ratio"] == 1
    for path in result.run_dir.rglob("*"):
        if path.is_file():
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            assert TOKEN.encode() not in data and PASSWORD.encode() not in data, path
