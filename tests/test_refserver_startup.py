"""Start-up order kept by the server's own processes (containers): bounded waits with a one-line error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from contend.refserver import startup


def closed_port() -> int:
    """Return a loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_wait_that_never_succeeds_says_what_and_how_long(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(startup, "POLL_S", 0.01)
    url = f"nats://127.0.0.1:{closed_port()}"
    with pytest.raises(startup.StartupError) as raised:
        startup.wait_until("NATS at x", lambda: startup.port_answers(url, 4222), 0.05)
    assert str(raised.value).startswith("NATS at x did not come within 0.05 s (last: ")
    assert "\n" not in str(raised.value)


def test_a_wait_ends_as_soon_as_it_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(startup, "POLL_S", 0.01)
    marker = tmp_path / "setup.json"
    calls = []

    def attempt() -> str | None:
        calls.append(1)
        if len(calls) == 3:
            marker.write_text("{}\n")
        return startup.file_written(marker)

    startup.wait_until("setup", attempt, 30)
    assert len(calls) == 3


def test_setup_writes_the_fixtures_with_where_the_host_reaches_them(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONTEND_REF_PUBLIC_URL", "http://127.0.0.1:8001")
    monkeypatch.setenv("CONTEND_REF_PUBLIC_DSN", "postgresql://postgres@127.0.0.1:55433/contend")
    out = tmp_path / "run" / "setup.json"
    record = startup.write_setup(out, {"project_id": 1, "pipeline_slug": "p", "job_ids": [4]})
    assert json.loads(out.read_text()) == record == {
        "project_id": 1, "pipeline_slug": "p", "job_ids": [4], "token_env": "CONTEND_REF_TOKEN",
        "base_url": "http://127.0.0.1:8001", "dsn": "postgresql://postgres@127.0.0.1:55433/contend"}
    assert out.read_text().endswith("\n")


@pytest.mark.integration
def test_setup_without_postgres_stops_with_one_line_and_web_without_setup_too(tmp_path: Path):
    env = {**os.environ, "CONTEND_REF_DSN": f"postgresql://postgres@127.0.0.1:{closed_port()}/contend",
           "CONTEND_REF_TOKEN": "0" * 40}
    out = subprocess.run([sys.executable, "-m", "contend.refserver", "setup", "--out",
                          str(tmp_path / "setup.json"), "--wait-s", "1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert out.stderr.startswith("Error: Postgres at 127.0.0.1 did not come within 1 s (last: ")
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "setup.json").exists()
    out = subprocess.run([sys.executable, "-m", "contend.refserver", "web", "--port", str(closed_port()),
                          "--after", str(tmp_path / "setup.json"), "--wait-s", "1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip() == (f"Error: setup's {tmp_path / 'setup.json'} (migrations and fixtures) "
                                  f"did not come within 1 s (last: no {tmp_path / 'setup.json'} yet)")
    del env["CONTEND_REF_TOKEN"]
    out = subprocess.run([sys.executable, "-m", "contend.refserver", "setup", "--out",
                          str(tmp_path / "setup.json")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1 and "no CONTEND_REF_TOKEN" in out.stderr
