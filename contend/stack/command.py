"""The user's own stack, driven by commands: up, ready, fixtures and down, once per variant.

A scenario's ``command`` target names the commands; ``CommandStack`` runs them for one variant:

- ``up`` starts in the background, in its own process group, with the variant's flags in its
  environment (it may run in the foreground, like ``manage.py runserver``, or return, like
  ``docker compose up -d``; a non-zero exit fails the variant at once);
- ``ready`` is probed (a URL answering 2xx, or a command exiting 0) until ``timeout_s`` after
  up's start; when it never succeeds the variant fails with the last lines of up's log (or of
  the output of ``ready.log``, e.g. ``docker compose logs``);
- ``fixtures`` (optional) prints JSON on stdout: ``job_ids`` and optionally ``base_url``,
  ``token_env``, ``pipeline_slug``, ``dsn`` (without a password) and ``pyspy_pids``;
- ``down`` runs on success, failure, Ctrl-C and SIGTERM alike, with a timeout; then whatever is
  left of up's process group gets SIGTERM and, after a grace period, SIGKILL.

Every command runs as a ManagedProcess (own session, parent-death signal, registry), with the
user's environment plus the flags and ``CONTEND_TARGET_DIR`` (a folder of the run for the
commands' own files; ``{target_dir}`` in an argument is replaced by it). Their output goes to
``<folder>/<command>.log``; the values of the secret variables are masked in those logs when the
variant ends. Nothing of the environment but the flags is written to the run folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from contend.errors import ConfigError, Interrupted, StackError
from contend.stack.process import Lifecycle, ManagedProcess, reap_orphans

TARGET_DIR_ENV = "CONTEND_TARGET_DIR"
TARGET_DIR_MARK = "{target_dir}"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
LOG_LINES = 15


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Command(_Model):
    """A command: a list of arguments (run without a shell), or one string with shell: true."""

    run: list[str] | str
    """e.g. [docker, compose, up, -d]; {target_dir} in an argument becomes the variant's target folder."""
    shell: bool = False
    """Run the string through /bin/sh -c (only when you need pipes or variables)."""
    timeout_s: PositiveFloat = 120.0
    """Seconds it may take (fixtures, down, ready.command, ready.log); up is bounded by ready.timeout_s."""

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        return {"run": value} if isinstance(value, list | str) else value

    @model_validator(mode="after")
    def _shell_only_for_strings(self) -> Self:
        if isinstance(self.run, str) and not self.shell:
            raise ValueError("a command is a list of arguments, e.g. [docker, compose, up, -d] "
                             "(a string needs shell: true)")
        if isinstance(self.run, list) and self.shell:
            raise ValueError("shell: true takes one string, e.g. {run: 'a | b', shell: true}")
        if not self.run:
            raise ValueError("the command is empty")
        return self

    def argv(self, target_dir: Path) -> list[str]:
        """Return the argument list to execute, ``{target_dir}`` replaced."""
        if isinstance(self.run, str):
            return ["/bin/sh", "-c", self.run]
        return [arg.replace(TARGET_DIR_MARK, str(target_dir)) for arg in self.run]


class Ready(_Model):
    """How contend knows the target is up: a URL answering 2xx, or a command exiting 0."""

    url: str | None = None
    """e.g. http://127.0.0.1:8000/api/v2/ (loopback only unless allow_remote); redirects are not followed."""
    command: Command | None = None
    """e.g. [docker, compose, exec, -T, django, python, manage.py, check, --database, default]."""
    timeout_s: PositiveFloat = 120.0
    """Seconds from the start of up until ready (image builds count: raise it for them)."""
    interval_s: PositiveFloat = 0.5
    """Seconds between two probes."""
    log: Command | None = None
    """A command whose output is shown when the target does not become ready (e.g. [docker, compose,
    logs, --tail, "30"]); none: the last lines of up's own output."""

    @model_validator(mode="after")
    def _one_probe(self) -> Self:
        if (self.url is None) == (self.command is None):
            raise ValueError("give either url: (an HTTP URL answering 2xx) or command: (exiting 0)")
        return self


class Fixtures(BaseModel):
    """What the fixtures command printed (every key but job_ids optional)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_ids: list[PositiveInt]
    base_url: str | None = None
    token_env: str | None = Field(default=None, pattern=ENV_NAME)
    pipeline_slug: str | None = None
    dsn: str | None = None
    """A DSN without a password (a password must come through the target's dsn_env)."""
    pyspy_pids: dict[str, list[PositiveInt]] = {}


def masked(text: str, secrets: Sequence[str]) -> str:
    """Return ``text`` with every value of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def tail(path: Path, secrets: Sequence[str] = (), lines: int = LOG_LINES) -> str:
    """Return the last lines of a command's log, indented, secrets masked ('(no output)' when empty)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        text = []
    if not text:
        return f"{path.name}: (no output)"
    return f"last lines of {path.name}:\n" + "\n".join("    " + masked(line, secrets) for line in text)


class CommandStack(Lifecycle):
    """One variant of a command target: up, ready and fixtures on start; down (always) on stop."""

    def __init__(
        self,
        folder: Path,
        *,
        up: Command,
        ready: Ready,
        fixtures: Command | None = None,
        down: Command | None = None,
        cwd: Path | None = None,
        flags: Mapping[str, str] | None = None,
        secret_envs: Sequence[str] = (),
        stop_event: threading.Event | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.folder = folder
        self.up_command = up
        self.ready = ready
        self.fixtures_command = fixtures
        self.down_command = down
        self.cwd = cwd
        self.flags = dict(flags or {})
        self.secret_envs = tuple(secret_envs)
        self.stop_event = stop_event or threading.Event()
        self.grace_s = grace_s
        self.up: ManagedProcess | None = None
        self.fixtures: Fixtures | None = None
        self.down_problem: str | None = None
        self._up_ran_at_ready = False

    # --- helpers -------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.flags, TARGET_DIR_ENV: str(self.folder)}

    def _secrets(self) -> list[str]:
        return [value for name in self.secret_envs if len(value := os.environ.get(name, "")) >= 4]

    def _process(self, name: str, command: Command, stdout: Path | None = None) -> ManagedProcess:
        return ManagedProcess(name, command.argv(self.folder), self.folder / f"{name}.log",
                              ready=lambda: True, env=self._env(), cwd=self.cwd, stdout_path=stdout)

    @staticmethod
    def _launch(process: ManagedProcess) -> None:
        try:
            process.launch()
        except OSError as error:  # no such program, not executable
            raise StackError(f"cannot run the {process.name} command {process.argv[0]!r}: {error.strerror}",
                             hint="a list runs without a shell: check the program and the cwd") from None

    def _call(self, name: str, command: Command, stdout: Path | None = None) -> int | None:
        """Run ``command`` to its end; return its exit code, None when it timed out (then killed).

        Whatever it leaves in its process group is stopped too; an interruption stops it and
        propagates.
        """
        process = self._process(name, command, stdout)
        self._launch(process)
        assert process.proc is not None
        try:
            return process.proc.wait(command.timeout_s)
        except subprocess.TimeoutExpired:
            return None
        finally:
            process.stop(timeout=self.grace_s)

    def tail(self, name: str) -> str:
        return tail(self.folder / f"{name}.log", self._secrets())

    # --- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        reap_orphans()
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.cwd is not None and not self.cwd.is_dir():
            raise ConfigError(f"target.cwd: no such folder {self.cwd}",
                              hint="cwd is relative to the folder contend runs in")
        self.up = self._process("up", self.up_command)
        self._launch(self.up)
        self._wait_ready()
        if self.fixtures_command is not None and not self.stop_event.is_set():
            self.fixtures = self._read_fixtures()
            if self.fixtures.token_env:
                self.secret_envs += (self.fixtures.token_env,)

    def _wait_ready(self) -> None:
        assert self.up is not None and self.up.proc is not None
        deadline = time.monotonic() + self.ready.timeout_s
        what = self.ready.url or "the ready command"
        while not self.stop_event.is_set():
            code = self.up.proc.poll()
            if code not in (None, 0):
                raise StackError(f"up exited with code {code}\n{self.tail('up')}",
                                 hint=f"its whole output is in {self.folder / 'up.log'}")
            if self._probe(deadline):
                self._up_ran_at_ready = self.up.proc.poll() is None
                return
            if time.monotonic() >= deadline:
                raise StackError(f"the target was not ready within {self.ready.timeout_s:g} s "
                                 f"({what} never succeeded)\n{self._failure_log()}",
                                 hint=f"the commands' output is in {self.folder}")
            self.stop_event.wait(min(self.ready.interval_s, max(0.0, deadline - time.monotonic())))
        raise Interrupted("stopped while waiting for the target to be ready")

    def _probe(self, deadline: float) -> bool:
        if self.ready.url is not None:
            try:
                timeout = max(0.5, min(5.0, deadline - time.monotonic()))
                return httpx.get(self.ready.url, timeout=timeout).is_success
            except httpx.HTTPError:
                return False
        assert self.ready.command is not None
        timeout = max(0.5, min(self.ready.command.timeout_s, deadline - time.monotonic()))
        return self._call("ready", self.ready.command.model_copy(update={"timeout_s": timeout})) == 0

    def _failure_log(self) -> str:
        if self.ready.log is None:
            return self.tail("up")
        self._call("ready-log", self.ready.log)
        return self.tail("ready-log")

    def _read_fixtures(self) -> Fixtures:
        assert self.fixtures_command is not None
        out = self.folder / "fixtures.out"
        code = self._call("fixtures", self.fixtures_command, stdout=out)
        if code != 0:
            state = "timed out" if code is None else f"exited with code {code}"
            raise StackError(f"the fixtures command {state}\n{self.tail('fixtures')}")
        text = out.read_text(errors="replace")
        out.unlink()
        try:
            fixtures = Fixtures.model_validate(json.loads(_last_json(text)))
        except (ValueError, ValidationError) as error:
            raise StackError("the fixtures command did not print JSON with job_ids "
                             f"({str(error).splitlines()[0]})",
                             hint='e.g. {"job_ids": [42], "base_url": "http://127.0.0.1:8000"}') from None
        if fixtures.dsn is not None and re.search(r"//[^/@]*:[^/@]*@|password=", fixtures.dsn):
            raise StackError("the fixtures command printed a DSN with a password",
                             hint="print a DSN without one, and give the password through target.dsn_env")
        (self.folder / "fixtures.json").write_text(fixtures.model_dump_json(indent=2) + "\n")
        return fixtures

    # --- stop ----------------------------------------------------------------------------------

    def dead(self) -> str | None:
        """Return 'up' when up ran in the foreground at ready time and has failed since (an exit code
        other than 0, or a signal). An up that exits with 0 after ready was a detached start that
        finished late (``podman-compose up -d`` still starting the last container while the first
        already answered)."""
        code = self.up.proc.poll() if self._up_ran_at_ready and self.up and self.up.proc else None
        return "up" if code not in (None, 0) else None

    def stop(self) -> None:
        """Run down (with its timeout), then stop what is left of up's process group; never raises
        for down's own failure (``down_problem`` says what went wrong)."""
        try:
            if self.down_command is not None and self.up is not None:
                code = self._call("down", self.down_command)
                if code != 0:
                    state = f"timed out after {self.down_command.timeout_s:g} s" if code is None \
                        else f"exited with code {code}"
                    self.down_problem = f"down {state}; check that nothing of the target still runs"
        finally:
            if self.up is not None:
                self.up.stop(timeout=self.grace_s)
            self._mask_logs()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if exc is None and self.down_problem:
            raise StackError(self.down_problem, hint=self.tail("down"))

    def _mask_logs(self) -> None:
        secrets = self._secrets()
        if not secrets:
            return
        for log in self.folder.glob("*.log"):
            with contextlib.suppress(OSError):
                text = log.read_text(errors="replace")
                if any(s in text for s in secrets):
                    log.write_text(masked(text, secrets))


def _last_json(text: str) -> str:
    """Return the JSON object of the output: the whole text, else its last line that parses."""
    stripped = text.strip()
    if stripped.startswith("{"):
        return stripped
    for line in reversed(stripped.splitlines()):
        if line.strip().startswith("{"):
            return line
    return stripped
