"""Shared fixtures: a real Postgres + NATS stack, helpers to look for surviving processes, and the tiers.

Tiers (markers in pyproject.toml): a test that starts any process (Postgres, NATS, a server, a
subprocess) is marked ``integration``, an end-to-end one ``slow``; the rest is the fast tier
(``make fast``), and there a test that starts a process fails at once with what to do.
"""

from __future__ import annotations

import _posixsubprocess
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest

from contend.stack import Stack

CONTEND = [sys.executable, "-m", "contend"]
"""`contend` in a process of its own: for tests of signals, process trees and a real terminal only."""


def contend(*args: str, env: Mapping[str, str | None] | None = None, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run ``contend ARGS`` in this process through click's CliRunner: the output, error lines and
    exit code a user sees, without starting a process. ``env`` adds to (None: removes from) the
    environment for the call."""
    from click.testing import CliRunner

    from contend.cli import cli

    with contextlib.chdir(cwd) if cwd else contextlib.nullcontext():
        result = CliRunner().invoke(cli, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback the user would have seen: fail with it
    return subprocess.CompletedProcess(["contend", *args], result.exit_code, result.stdout, result.stderr)


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.1) -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Return live processes whose command line contains ``text`` (e.g. a run folder path)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def stack_processes(run_dir: Path) -> list[psutil.Process]:
    """Return live processes of a stack started in ``run_dir``, Postgres' backends included.

    When contend runs as root and Postgres' user cannot enter ``run_dir``, the data folder lives
    elsewhere and ``pgdata.location`` says where; look for that path too.
    """
    marks = [str(run_dir)] + [p.read_text().strip() for p in run_dir.glob("**/pgdata.location")]
    found: dict[int, psutil.Process] = {}
    for mark in marks:
        for proc in processes_mentioning(mark):
            found[proc.pid] = proc
            try:
                found.update({child.pid: child for child in proc.children(recursive=True)})
            except psutil.Error:
                continue
    return list(found.values())


class StartsAProcess(AssertionError):
    """A test of the fast tier tried to start a process."""


@contextlib.contextmanager
def _no_processes(item: pytest.Item) -> Iterator[None]:
    """Make every way of starting a process fail while an unmarked test sets up and runs."""
    if item.get_closest_marker("integration") or item.get_closest_marker("slow"):
        yield
        return

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise StartsAProcess(f"{item.nodeid} starts a process: mark it @pytest.mark.integration, "
                             "or use click.testing.CliRunner instead of `python -m contend`")

    saved = {(module, name): getattr(module, name) for module, name in
             ((subprocess, "_fork_exec"), (_posixsubprocess, "fork_exec"), (os, "fork"),
              (os, "posix_spawn"), (os, "posix_spawnp"))}
    for module, name in saved:
        setattr(module, name, refuse)
    try:
        yield
    finally:
        for (module, name), original in saved.items():
            setattr(module, name, original)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _no_processes(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _no_processes(item):
        yield


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # The process registry of the tests stays apart from a user's own runs.
    os.environ["CONTEND_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    yield


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One Postgres + NATS stack shared by tests that do not disturb each other."""
    with Stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def sample_dsn(stack: Stack) -> str:
    """DSN of a database of its own in the shared stack, so sampler counts see only their tests."""
    import psycopg

    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE sample_tests")
    return stack.dsn.rsplit("/", 1)[0] + "/sample_tests"
