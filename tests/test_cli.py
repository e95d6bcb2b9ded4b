"""The command line shell: version, help, doctor, and one-line errors with the usage exit code."""

from __future__ import annotations

import pytest

from contend import __version__
from contend.errors import ExitCode
from tests.conftest import contend


def test_version() -> None:
    out = contend("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"contend, version {__version__}"


def test_every_command_has_help() -> None:
    top = contend("--help")
    assert top.returncode == 0
    commands = [line.split()[0] for line in top.stdout.split("Commands:")[1].splitlines()
                if line.startswith("  ") and not line.startswith("   ")]
    assert {"up", "doctor"} <= set(commands)
    for name in commands:
        sub = contend(name, "--help")
        assert sub.returncode == 0, name
        assert sub.stdout.startswith("Usage: "), name


@pytest.mark.integration  # doctor starts Postgres, nats-server and py-spy to check them
def test_doctor_passes_here_and_names_each_check() -> None:
    out = contend("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "[ok  ] python", "[ok  ] postgres", "[ok  ] nats-server", "[ok  ] py-spy", "[ok  ] disk"]
    assert lines[-1] == "all checks passed"


@pytest.mark.parametrize("args", [["no-such-command"], ["up", "--no-such-option"], ["doctor", "extra"]])
def test_bad_arguments_give_one_error_line_and_the_usage_code(args: list[str]) -> None:
    out = contend(*args)
    assert out.returncode == ExitCode.USAGE
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert "Traceback" not in out.stderr


def test_a_password_in_a_dsn_on_the_command_line_is_refused_without_echoing_it() -> None:
    out = contend("watch", "--dsn", "postgresql://someone:s3cret@127.0.0.1:1/db")
    assert out.returncode == ExitCode.USAGE
    assert "CONTEND_DSN" in out.stderr
    assert "s3cret" not in out.stdout + out.stderr


def test_watch_refuses_an_app_timeout_it_does_not_know_in_one_line() -> None:
    done = contend("watch", "--dsn", "postgresql://u@127.0.0.1:1/x", "--app-timeout", "statement_timeout=30s")
    assert done.returncode == 2
    assert "give NAME=MS" in done.stderr and "statement_timeout=30000" in done.stderr
