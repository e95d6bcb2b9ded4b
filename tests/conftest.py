"""Shared fixtures: a real Postgres + NATS stack, helpers to look for surviving processes, and the tiers.

Tiers (markers in pyproject.toml): a test that starts any process (Postgres, NATS, a server, a
subprocess) is marked ``integration``, an end-to-end one ``slow``; the rest is the fast tier
(``make fast``), and there a test that starts a process fails at once with what to do.

``make test`` runs every test in parallel worker processes (pytest-xdist, ``-n 4 --dist loadgroup``):
most of them wait (servers starting, loads and drains running, timeouts expiring). Each worker has
its own temporary folders, process registry (``CONTEND_STATE_DIR``) and session ``stack``; a test is
parallel-safe when it

- writes only below ``tmp_path`` / ``tmp_path_factory`` (never the repository's ``reports/``);
- takes ports from the stack or ``free_port()``, never a fixed number;
- looks for processes by a path of its own (``stack_processes(tmp_path)``,
  ``processes_mentioning(str(tmp_path))``), never by a program's name: other workers run the same
  programs;
- changes the environment through ``monkeypatch`` or a child's ``env``, and leaves the shared stack
  as it found it (its own database, table or role names; rolled back or dropped at the end);
- asserts no timing that a busy machine stretches. A test that measures contention against a bound
  or between variants run one after the other (lock waits, latencies, poll order, a sampling rate)
  is marked ``timing``: those run one after another on one worker, never two at once.

Tests that share a module- or class-scoped fixture (a reference stack started once for them) stay on
one worker, in their module's order (``_shared_fixtures_stay_together``), so it still starts once.
Both rest on pytest-xdist's groups, which pytest 9.2 breaks: pyproject.toml keeps pytest below it,
and a run with such a pytest stops at once (``pytest_configure``).

A test waits for conditions, not for time: a long client timeout, drain or connection-attempt count
that only waits for something the test does not look at is cut in the test's own scenario or flags.
"""

from __future__ import annotations

import _posixsubprocess
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import psycopg
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


def alive(proc: psutil.Process | int) -> bool:
    """Whether ``proc`` (a process or a pid) still runs; a zombie, or one that exits or is reaped
    while being asked, does not."""
    try:
        proc = psutil.Process(proc) if isinstance(proc, int) else proc
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def cmdline(proc: psutil.Process) -> str:
    """Return the command line of ``proc``, or "" once it has exited or is a zombie (a py-spy dump
    or a psql that ends between listing and reading)."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


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


TIMING_GROUP = "timing"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timing"):
            item.add_marker(pytest.mark.xdist_group(TIMING_GROUP))  # one at a time, on one worker
    _shared_fixtures_stay_together(items)
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the order is the one tests are handed out in
        _longest_first(items)


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a pytest whose test ids pytest-xdist cannot change: its loadgroup sends a test to its
    group's worker by the ``@group`` it appends to the id, and with pytest 9.2 it ignores every group
    without a word, running the ``timing`` tests at the same time (pytest-xdist issue 1386)."""
    import xdist

    if config.getoption("dist", "no") == "loadgroup" and _version(pytest.__version__) >= (9, 2) \
            and _version(xdist.__version__) <= (3, 8):
        raise pytest.UsageError(f"pytest-xdist {xdist.__version__} ignores xdist_group with pytest "
                                f"{pytest.__version__}: install the pytest pyproject.toml asks for "
                                "(make install)")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def _group(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker("xdist_group")
    return str(mark.args[0]) if mark else None


def _shared_fixtures_stay_together(items: list[pytest.Item]) -> None:
    """Put the tests that use one module- or class-scoped fixture in one pytest-xdist group."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or _group(item):
            continue
        scopes = {defs[-1].scope for defs in info.name2fixturedefs.values() if defs}
        if "module" in scopes:
            group = item.nodeid.split("::")[0]
        elif "class" in scopes and getattr(item, "cls", None) is not None:
            group = item.nodeid.rsplit("::", 1)[0]
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))


def _longest_first(items: list[pytest.Item]) -> None:
    """Order the tests as workers should take them: the ``timing`` group (the longest chain), then
    ``slow``, then ``integration``, the fast tier last to fill the gaps. A group moves as one, in
    its own order (a module may end with a test that stops its stack)."""
    def rank(item: pytest.Item) -> int:
        if _group(item) == TIMING_GROUP:
            return 0
        return next((n for n, marker in enumerate(("slow", "integration"), 1)
                     if item.get_closest_marker(marker)), 3)

    group_rank: dict[str, int] = {}
    for item in items:
        if (group := _group(item)) is not None:
            group_rank[group] = min(group_rank.get(group, 3), rank(item))
    items.sort(key=lambda item: group_rank[g] if (g := _group(item)) is not None else rank(item))


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
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE sample_tests")
    return stack.dsn.rsplit("/", 1)[0] + "/sample_tests"


HOT_UPDATE = "UPDATE sample_hot SET n = n + 1 WHERE id = 1"


class Contention:
    """One holder of row id=1 idle in an open transaction, and ``waiters`` UPDATEs queued behind it.

    Waiters are started one at a time, each only once the previous one waits, so the queue order
    (and so what pg_blocking_pids returns) is known. ``holder_setup`` runs on the holder's
    connection first (e.g. to set application_name).
    """

    def __init__(self, dsn: str, waiters: int = 5, holder_setup: str | None = None) -> None:
        self.dsn = dsn
        self.n_waiters = waiters
        self.holder_setup = holder_setup
        self.holder: psycopg.Connection[Any] | None = None
        self.waiters: list[psycopg.Connection[Any]] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def __enter__(self) -> Contention:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS sample_hot (id int PRIMARY KEY, n int NOT NULL)")
            conn.execute("INSERT INTO sample_hot VALUES (1, 0) ON CONFLICT DO NOTHING")
        self.holder = psycopg.connect(self.dsn)
        if self.holder_setup:
            self.holder.execute(self.holder_setup)
        self.holder.execute(HOT_UPDATE)
        self.holder_started = time.time()
        for _ in range(self.n_waiters):
            conn = psycopg.connect(self.dsn, autocommit=True)
            self.waiters.append(conn)
            thread = threading.Thread(target=self._wait, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)
            wait_for(lambda pid=conn.info.backend_pid: self.waits(pid), timeout=20)
        return self

    def _wait(self, conn: psycopg.Connection[Any]) -> None:
        try:
            conn.execute(HOT_UPDATE)
        except BaseException as exc:
            self.errors.append(exc)

    def waits(self, pid: int) -> bool:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            sql = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s"
            row = conn.execute(sql, (pid,)).fetchone()
        return row is not None and row[0] == "Lock"

    @property
    def holder_pid(self) -> int:
        assert self.holder is not None
        return self.holder.info.backend_pid

    @property
    def waiter_pids(self) -> list[int]:
        return [c.info.backend_pid for c in self.waiters]

    def __exit__(self, *exc: object) -> None:
        assert self.holder is not None
        self.holder.rollback()
        self.holder.close()
        for thread in self.threads:
            thread.join(timeout=20)
        for conn in self.waiters:
            conn.close()
        assert not self.errors, self.errors


def end_sessions(dsn: str) -> None:
    """End every other session of the database (a backend inside pg_sleep() does not notice that its
    client is gone)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = current_database() AND pid <> pg_backend_pid()")


@contextlib.contextmanager
def helper_processes(dsn: str, helper: Path, tmp_path: Path) -> Iterator[Callable[[str], dict[str, Any]]]:
    """Yield ``start(mode)``: run the threaded helper script ``helper`` in a mode against ``dsn`` (its
    table wg_rows made first) and return its info (pid, threads); every one is killed at the end and
    its sessions ended."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wg_rows (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("INSERT INTO wg_rows SELECT g, 0 FROM generate_series(1, 20) g ON CONFLICT DO NOTHING")
    procs: list[subprocess.Popen[bytes]] = []

    def start(mode: str) -> dict[str, Any]:
        info_path = tmp_path / f"info-{mode}.json"
        procs.append(subprocess.Popen([sys.executable, str(helper), mode, str(info_path)],
                                      env={"SAMPLE_DSN": dsn, "PATH": "/usr/bin:/bin"}))
        wait_for(info_path.exists, timeout=60)
        return dict(json.loads(info_path.read_text()))

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
        end_sessions(dsn)
