"""The command target's lifecycle: up, ready, fixtures, down, and nothing of the user's commands left over."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psutil
import pytest

from contend.errors import LoadError, StackError
from contend.stack.command import Command, CommandStack, Ready
from contend.stack.process import free_port
from tests.conftest import alive, processes_mentioning, wait_for

pytestmark = pytest.mark.integration  # every test here starts processes

TINY = str(Path(__file__).parent / "data" / "tiny_target.py")


def _group(pgid: int) -> list[psutil.Process]:
    """Return the live processes of process group ``pgid``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _up(port: int) -> Command:
    return Command(run=[sys.executable, TINY, str(port), "{target_dir}"])


def _down(marker: Path) -> Command:
    return Command(run=[sys.executable, "-c", f"open({str(marker)!r}, 'a').write('down\\n')"], timeout_s=20)


def _stack(tmp_path: Path, port: int, **kwargs: object) -> CommandStack:
    options: dict[str, object] = {
        "up": _up(port),
        "ready": Ready(url=f"http://127.0.0.1:{port}/", timeout_s=30, interval_s=0.1),
        "down": _down(tmp_path / "down-ran"),
        "flags": {"FLAG_A": "on"},
        "grace_s": 2.0,
        **kwargs,
    }
    return CommandStack(tmp_path / "target", **options)  # type: ignore[arg-type]


def _up_info(stack: CommandStack) -> dict[str, object]:
    path = stack.folder / "up.json"
    wait_for(path.exists, timeout=30)
    return dict(json.loads(path.read_text()))


def test_up_ready_fixtures_then_down_and_no_process_survives(tmp_path: Path) -> None:
    port = free_port()
    fixtures = Command(run=[sys.executable, "-c", "import json; print('noise'); "
                            f"print(json.dumps({{'job_ids': [7], 'base_url': 'http://127.0.0.1:{port}'}}))"])
    with _stack(tmp_path, port, fixtures=fixtures) as stack:
        info = _up_info(stack)
        assert info["flag_a"] == "on", "the variant's flags reach up through its environment"
        assert info["target_dir"] == str(stack.folder)
        assert stack.fixtures is not None and stack.fixtures.job_ids == [7]
        assert stack.fixtures.base_url == f"http://127.0.0.1:{port}"
        assert _group(int(info["pgid"]))  # type: ignore[call-overload]
        assert not (tmp_path / "down-ran").exists()
    assert (tmp_path / "down-ran").read_text() == "down\n"
    # The helper ignores SIGTERM: only the last-resort SIGKILL of the group stops it.
    wait_for(lambda: not _group(int(info["pgid"])), timeout=20)  # type: ignore[call-overload]
    assert not psutil.pid_exists(int(info["helper"]))  # type: ignore[call-overload]
    assert json.loads((stack.folder / "fixtures.json").read_text())["job_ids"] == [7]


def test_down_runs_when_the_work_inside_fails(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(LoadError), _stack(tmp_path, port) as stack:
        info = _up_info(stack)
        raise LoadError("the load failed")
    assert (tmp_path / "down-ran").exists()
    wait_for(lambda: not _group(int(info["pgid"])), timeout=20)  # type: ignore[call-overload]


def test_a_ready_that_never_succeeds_fails_with_ups_last_lines_and_runs_down(tmp_path: Path) -> None:
    port = free_port()
    never = Ready(command=Command(run=["false"]), timeout_s=2, interval_s=0.2)
    with pytest.raises(StackError) as caught, _stack(tmp_path, port, ready=never):
        pass
    message = caught.value.message
    assert "not ready within 2 s" in message
    assert "tiny target log line 29" in message, "the last lines of up's output are shown"
    assert (tmp_path / "down-ran").exists()
    info = json.loads((tmp_path / "target" / "up.json").read_text())
    wait_for(lambda: not _group(info["pgid"]), timeout=20)


def test_ready_log_command_output_is_shown_instead(tmp_path: Path) -> None:
    port = free_port()
    never = Ready(command=Command(run=["false"]), timeout_s=1, interval_s=0.2,
                  log=Command(run=["echo", "the compose logs would be here"]))
    with pytest.raises(StackError) as caught, _stack(tmp_path, port, ready=never):
        pass
    assert "the compose logs would be here" in caught.value.message


def test_an_up_that_fails_fails_at_once(tmp_path: Path) -> None:
    up = Command(run="echo cannot start >&2; exit 3", shell=True)
    with pytest.raises(StackError) as caught, _stack(tmp_path, free_port(), up=up):
        pass
    assert "up exited with code 3" in caught.value.message and "cannot start" in caught.value.message
    assert (tmp_path / "down-ran").exists()


@pytest.mark.parametrize(("code", "dead"), [(0, None), (3, "up")])
def test_an_up_still_running_at_ready_fails_the_variant_only_when_it_fails(tmp_path: Path, code: int,
                                                                           dead: str | None) -> None:
    # a detached start (compose up -d) may still be starting its last container when the first answers
    up = Command(run='touch "$CONTEND_TARGET_DIR/started"; '
                     f'while [ ! -e "$CONTEND_TARGET_DIR/finish" ]; do sleep 0.05; done; exit {code}',
                 shell=True)
    ready = Ready(command=Command(run=["test", "-e", "{target_dir}/started"]), timeout_s=30, interval_s=0.1)
    with _stack(tmp_path, free_port(), up=up, ready=ready) as stack:
        assert stack.dead() is None
        (stack.folder / "finish").touch()
        wait_for(lambda: stack.up is not None and not stack.up.alive(), timeout=30)
        assert stack.dead() == dead


def test_a_hanging_down_is_killed_after_its_timeout(tmp_path: Path) -> None:
    port = free_port()
    hang = Command(run=[sys.executable, "-c", "import time; time.sleep(601)"], timeout_s=1)
    with pytest.raises(StackError) as caught, _stack(tmp_path, port, down=hang) as stack:
        info = _up_info(stack)
    assert "down timed out after 1 s" in caught.value.message
    assert not processes_mentioning("time.sleep(601)")
    wait_for(lambda: not _group(int(info["pgid"])), timeout=20)  # type: ignore[call-overload]


def test_secrets_are_masked_in_the_commands_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINY_SECRET", "s3cr3t-value")
    port = free_port()
    with _stack(tmp_path, port, secret_envs=["TINY_SECRET"]) as stack:
        _up_info(stack)
    log = (tmp_path / "target" / "up.log").read_text()
    assert "secret seen: ***" in log and "s3cr3t-value" not in log


def test_fixtures_must_print_job_ids_and_no_dsn_password(tmp_path: Path) -> None:
    port = free_port()
    bad = Command(run=["echo", '{"job_ids": [1], "dsn": "postgresql://u:pw@127.0.0.1/db"}'])
    with pytest.raises(StackError, match="DSN with a password"), _stack(tmp_path, port, fixtures=bad):
        pass
    none = Command(run=["echo", "nothing"])
    with pytest.raises(StackError, match="did not print JSON with job_ids"), \
            _stack(tmp_path / "2", port, fixtures=none):
        pass


def test_command_forms() -> None:
    assert Command.model_validate(["a", "b"]).run == ["a", "b"]
    shell = Command.model_validate({"run": "a | b", "shell": True})
    assert shell.argv(Path("/t")) == ["/bin/sh", "-c", "a | b"]
    assert Command.model_validate(["x", "{target_dir}/f"]).argv(Path("/t")) == ["x", "/t/f"]
    with pytest.raises(ValueError, match="needs shell: true"):
        Command.model_validate("docker compose up")
    with pytest.raises(ValueError, match="either url"):
        Ready.model_validate({"timeout_s": 3})


def test_a_program_that_does_not_exist_is_a_stack_error(tmp_path: Path) -> None:
    up = Command(run=["no-such-program-for-contend"])
    with pytest.raises(StackError, match="cannot run the up command 'no-such-program-for-contend'"), \
            _stack(tmp_path, free_port(), up=up):
        pass
    assert (tmp_path / "down-ran").exists()


def test_a_sigkilled_contend_leaves_ups_group_to_the_next_start(tmp_path: Path) -> None:
    """The leader of up dies with contend (parent-death signal); what it left in its group (here a
    helper that ignores SIGTERM) is stopped by the next contend start, from the registry."""
    import subprocess

    from contend.stack.process import reap_orphans

    port = free_port()
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from contend.stack.command import Command, CommandStack, Ready\n"
        f"up = Command(run=[sys.executable, {TINY!r}, '{port}', '{{target_dir}}'])\n"
        f"ready = Ready(url='http://127.0.0.1:{port}/', timeout_s=30, interval_s=0.1)\n"
        f"with CommandStack(Path({str(tmp_path / 'target')!r}), up=up, ready=ready):\n"
        "    print('up', flush=True)\n"
        "    time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None and owner.stdout.readline().strip() == "up"
    info = json.loads((tmp_path / "target" / "up.json").read_text())
    owner.kill()
    owner.wait()
    wait_for(lambda: not alive(info["pid"]), timeout=20)
    assert psutil.pid_exists(info["helper"]), "the helper outlives its leader until the next start"
    assert any(f"(pid {info['pid']})" in line for line in reap_orphans())
    wait_for(lambda: not _group(info["pgid"]), timeout=20)
