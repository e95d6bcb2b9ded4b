"""`contend run` on a command target: down after a failed load and after SIGTERM, a ready that never succeeds.

The user's server is tests/data/tiny_target.py (a real HTTP server with a helper child that ignores
SIGTERM); the samplers watch the shared test Postgres through the DSN the fixtures print.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

from contend.errors import ExitCode
from contend.live import LiveFinding
from contend.load import LoadProgress
from contend.run import run_scenario
from contend.scenario import parse_scenario
from contend.stack import Stack
from contend.stack.process import free_port
from tests.conftest import CONTEND, cmdline, processes_mentioning, wait_for
from tests.test_command import TINY, _group

pytestmark = pytest.mark.integration  # every test here starts processes

SCENARIO = """\
name: tiny
target:
  kind: command
  up: [{python}, {tiny}, "{port}", "{{target_dir}}"]
  ready: {{command: {{run: 'test "$READY" = yes', shell: true}}, timeout_s: 5}}
  fixtures: [echo, '{{"job_ids": [1], "base_url": "http://127.0.0.1:{port}", "dsn": "{dsn}"}}']
  down: [sh, -c, 'echo "$FLAG_A" >> {marker}']
  token_env: TINY_TOKEN
workloads:
  - {{kind: batched_post, batch: 2, concurrency: 2, duration_s: {duration}, timeout_s: 10}}
warm_up_s: 0
cool_down_s: 0
sampling: {{pyspy: false, nats: false}}
variants:
  - {{name: first, flags: {{FLAG_A: first, READY: {ready}}}}}
  - {{name: second, flags: {{FLAG_A: second, READY: "yes"}}, params: {{duration_s: 1}}}}
"""


def _scenario(tmp_path: Path, stack: Stack, *, duration: float = 60, ready: str = '"yes"') -> str:
    text = SCENARIO.format(python=sys.executable, tiny=TINY, port=free_port(), dsn=stack.dsn,
                           marker=tmp_path / "down-ran", duration=duration, ready=ready)
    # Each variant's up listens on the same port, one after the other.
    return text


def _up_info(variant: Path) -> dict[str, int]:
    path = variant / "target" / "up.json"
    wait_for(path.exists, timeout=60)
    return dict(json.loads(path.read_text()))


def _nothing_left(info: dict[str, int]) -> bool:
    return not _group(info["pgid"]) and not psutil.pid_exists(info["helper"])


def _meta(run_dir: Path, name: str) -> dict[str, object]:
    return dict(json.loads((run_dir / "variants" / name / "meta.json").read_text()))


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TINY_TOKEN", "tiny-token-value-1234")
    return "tiny-token-value-1234"


class _KillTheLoad:
    """An observer that kills the load process of the first variant as soon as it reports progress."""

    def __init__(self, run_dirs: Path) -> None:
        self.run_dirs = run_dirs
        self.killed: list[int] = []

    def variant_started(self, index: int, total: int, name: str) -> None: ...
    def phase(self, text: str) -> None: ...
    def variant_finished(self, name: str, status: str, reason: str | None) -> None: ...
    def findings(self, findings: Sequence[LiveFinding], new: Sequence[LiveFinding]) -> None: ...

    def load_progress(self, progress: LoadProgress, samples_dir: Path) -> None:
        if self.killed or samples_dir.parent.name != "first":
            return
        for proc in processes_mentioning(str(samples_dir.parent / "load")):
            if "contend.load.child" in cmdline(proc):
                proc.kill()
                self.killed.append(proc.pid)


def test_down_runs_after_a_failed_load_and_the_run_goes_on(tmp_path: Path, stack: Stack, token: str) -> None:
    scenario = parse_scenario(_scenario(tmp_path, stack))
    observer = _KillTheLoad(tmp_path)
    result = run_scenario(scenario, tmp_path / "reports", observer=observer)
    assert observer.killed, "the load of the first variant ran"
    first, second = (_meta(result.run_dir, n) for n in ("first", "second"))
    assert first["status"] == "failed" and "load process exited" in str(first["reason"])
    assert second["status"] == "ok"
    # down ran after each variant, with that variant's flags in its environment
    assert (tmp_path / "down-ran").read_text().split() == ["first", "second"]
    for name in ("first", "second"):
        info = _up_info(result.run_dir / "variants" / name)
        assert info["flag_a"] == name
        wait_for(lambda info=info: _nothing_left(info), timeout=20)
    assert (result.run_dir / "report.html").exists()


class _KillTheServer(_KillTheLoad):
    """Kills the first variant's server (up, still in the foreground) during its load."""

    def load_progress(self, progress: LoadProgress, samples_dir: Path) -> None:
        if not self.killed and samples_dir.parent.name == "first":
            pid = _up_info(samples_dir.parent)["pid"]
            psutil.Process(pid).kill()
            self.killed.append(pid)


def test_a_foreground_up_that_dies_during_the_load_fails_its_variant(tmp_path: Path, stack: Stack,
                                                                    token: str) -> None:
    observer = _KillTheServer(tmp_path)
    result = run_scenario(parse_scenario(_scenario(tmp_path, stack)), tmp_path / "reports", observer=observer)
    first, second = (_meta(result.run_dir, n) for n in ("first", "second"))
    assert first["status"] == "failed"
    assert first["reason"] == "up died during the load (see its log under target/)"
    assert second["status"] == "ok"
    assert (tmp_path / "down-ran").read_text().split() == ["first", "second"]
    info = _up_info(result.run_dir / "variants" / "first")
    wait_for(lambda: _nothing_left(info), timeout=20)


def test_a_ready_that_never_succeeds_fails_the_variant_and_the_run_goes_on(tmp_path: Path, stack: Stack,
                                                                          token: str) -> None:
    scenario = parse_scenario(_scenario(tmp_path, stack, duration=1, ready='"no"'))
    result = run_scenario(scenario, tmp_path / "reports")
    first, second = (_meta(result.run_dir, n) for n in ("first", "second"))
    assert first["status"] == "failed"
    reason = str(first["reason"])
    assert "not ready within 5 s" in reason
    assert "tiny target log line 29" in reason, "the last lines of up's output explain it"
    assert second["status"] == "ok"
    assert list((result.run_dir / "variants" / "second" / "load").glob("requests-*.jsonl"))
    assert (tmp_path / "down-ran").read_text().split() == ["first", "second"]
    for name in ("first", "second"):
        info = _up_info(result.run_dir / "variants" / name)
        wait_for(lambda info=info: _nothing_left(info), timeout=20)
    # Nothing of the environment but the flags the scenario sets reaches the run folder.
    for path in result.run_dir.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_of_contend_runs_down_and_leaves_no_process(
        tmp_path: Path, stack: Stack, token: str, sig: signal.Signals) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(_scenario(tmp_path, stack))
    reports = tmp_path / "reports"
    proc = subprocess.Popen([*CONTEND, "run", str(path), "--reports", str(reports)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TINY_TOKEN": token})
    run_dir = wait_for(lambda: next(reports.glob("tiny-*"), None), timeout=60)
    assert isinstance(run_dir, Path)
    first = run_dir / "variants" / "first"
    info = _up_info(first)
    wait_for(lambda: list((first / "load").glob("requests-*.jsonl")), timeout=120)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert (tmp_path / "down-ran").read_text().split() == ["first"]
    wait_for(lambda: _nothing_left(info), timeout=20)
    assert not (run_dir / "variants" / "second").exists()
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "partial"
