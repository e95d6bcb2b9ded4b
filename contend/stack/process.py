"""One lifecycle object per external process, and the registry that stops a dead run's leftovers.

Every process contend starts:
- runs in its own session (so its whole process group can be signalled at once);
- gets SIGKILL from the kernel when contend itself dies (Linux ``PR_SET_PDEATHSIG``), so even a
  SIGKILLed contend leaves nothing running;
- is written into a registry (one JSON file per process, removed on a clean stop); the next contend
  start stops any registered process whose owner is gone (the fallback where PDEATHSIG is missing);
- logs into a file of the run folder, whose last lines are shown when it fails to come up.

PDEATHSIG fires when the *thread* that started the child ends, not only the process: start
processes from a thread that lives as long as they should (the main thread, in contend).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

from contend.errors import StackError

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def state_dir() -> Path:
    """Return the folder of the process registry (``CONTEND_STATE_DIR`` overrides it)."""
    base = os.environ.get("CONTEND_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "contend"
    )
    path = Path(base) / "procs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _die_with_parent() -> None:
    # Runs in the child between fork and exec, after any setuid (which would clear it).
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def kill_group(pid: int, timeout: float = 10.0) -> None:
    """Terminate the process group led by ``pid``, then kill what is left after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            if not _group_alive(pid):
                return
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans() -> list[str]:
    """Stop every registered process whose contend owner is gone; return what was stopped."""
    stopped = []
    for entry in sorted(state_dir().glob("*.json")):
        try:
            info = json.loads(entry.read_text())
        except (OSError, ValueError):
            entry.unlink(missing_ok=True)
            continue
        if _create_time(info["owner_pid"]) == info["owner_started"]:
            continue  # its owner still runs and will stop it
        started = _create_time(info["pid"])
        # A leader killed by the parent-death signal may leave its group behind (a command that put
        # a server in the background): with no process of that pid, the group of that id can only
        # be the leader's own, since the kernel reuses no pid while its group has members.
        if started == info["started"] or (started is None and _group_alive(info["pid"])):
            kill_group(info["pid"])
            stopped.append(f"{info['name']} (pid {info['pid']})")
        entry.unlink(missing_ok=True)
    return stopped


class Lifecycle:
    """A context manager over ``start()``/``stop()``: a start that fails half-way is stopped too."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ManagedProcess(Lifecycle):
    """A child process on loopback: started, checked for readiness, logged, always stopped."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        ready: Callable[[], bool],
        ready_timeout: float = 30.0,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        stdout_path: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.env = env
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self.stdout_path = stdout_path
        """Where stdout goes instead of the log (stderr stays in the log), for a command's output."""
        self.proc: subprocess.Popen[bytes] | None = None
        self._entry: Path | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise StackError(f"{self.name} is not running")
        return self.proc.pid

    def start(self) -> None:
        self.launch()
        self._wait_ready()

    def launch(self) -> None:
        """Start the process and register it, without waiting for it to be ready."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as files:
            log = files.enter_context(open(self.log_path, "ab"))
            out = files.enter_context(open(self.stdout_path, "wb")) if self.stdout_path else log
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log if self.stdout_path else subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                user=self.user,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._register()

    def _register(self) -> None:
        me = os.getpid()
        info = {
            "name": self.name,
            "pid": self.pid,
            "started": _create_time(self.pid),
            "owner_pid": me,
            "owner_started": _create_time(me),
            "argv": self.argv[:1],
        }
        self._entry = state_dir() / f"{self.pid}.json"
        self._entry.write_text(json.dumps(info))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                self.stop()
                raise StackError(
                    f"{self.name} exited with code {self.proc.returncode} while starting",
                    hint=self.log_tail(),
                )
            with contextlib.suppress(Exception):
                if self.ready():
                    return
            time.sleep(0.1)
        self.stop()
        raise StackError(
            f"{self.name} did not become ready within {self.ready_timeout:.0f} s",
            hint=self.log_tail(),
        )

    def log_tail(self, lines: int = 15) -> str:
        """Return the last lines of the process log, for an error message."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return f"no log at {self.log_path}"
        return f"last lines of {self.log_path}:\n" + "\n".join("    " + line for line in text)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the whole process group: the stop signal, then SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        kill_group(self.proc.pid, timeout=2.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self._entry is not None:
            self._entry.unlink(missing_ok=True)
            self._entry = None

