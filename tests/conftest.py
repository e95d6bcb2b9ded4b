"""Shared fixtures: a real Postgres + NATS stack, and helpers to look for surviving processes."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from contend.stack import Stack

CONTEND = [sys.executable, "-m", "contend"]


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
