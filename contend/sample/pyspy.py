"""py-spy: one-shot stack dumps of server processes, a whole-run recording, and their summary.

``py-spy dump --json`` pauses the target for the few milliseconds of one read; at one dump every
2 s per process that is far below the ~2 % py-spy's maintainer measured at 100 Hz (field-notes 3).
Threads blocked in a socket read (waiting for Postgres) are kept: a dump shows every thread.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from contend.errors import SamplerError
from contend.sample.stacks import (  # re-exported: the thread classification lived here before
    ROLE_LABELS as ROLE_LABELS,
)
from contend.sample.stacks import (
    is_own as is_own,
)
from contend.sample.stacks import (
    own_chain as own_chain,
)
from contend.sample.stacks import (
    summarize_stacks as summarize_stacks,
)
from contend.sample.stacks import (
    thread_state as thread_state,
)
from contend.sample.stacks import (
    waits_on_postgres as waits_on_postgres,
)
from contend.stack.process import ManagedProcess

PERMISSION_HINT = "py-spy needs root or the SYS_PTRACE capability (docker run --cap-add SYS_PTRACE)"

def py_spy_binary() -> str:
    """Return the py-spy executable: beside this Python (the py-spy wheel), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise SamplerError("py-spy not found", hint="pip install py-spy")
    return found


def parse_dump(text: str) -> list[dict[str, Any]]:
    """Return the threads of ``py-spy dump --json`` output in the record format (docs/records.md)."""
    return [
        {
            "thread_id": thread.get("thread_id"),
            "os_thread_id": thread.get("os_thread_id"),
            "name": thread.get("thread_name"),
            "idle": not thread.get("active", True),
            "active": bool(thread.get("active", True)),
            "frames": [
                {"name": f.get("name"), "filename": f.get("filename"), "line": f.get("line")}
                for f in thread.get("frames", ())
            ],
        }
        for thread in json.loads(text)
    ]


def dump(pid: int, *, timeout: float = 10.0, nonblocking: bool = False) -> list[dict[str, Any]]:
    """Return the threads of process ``pid`` (innermost frame first); SamplerError when it fails."""
    argv = [py_spy_binary(), "dump", "--json", "--pid", str(pid)]
    if nonblocking:
        argv.append("--nonblocking")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SamplerError(f"py-spy dump of pid {pid} took more than {timeout:.0f} s") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        first = message[0] if message else f"exit code {done.returncode}"
        if any(word in done.stderr for word in ("Permission denied", "Operation not permitted")):
            raise SamplerError(f"py-spy cannot read pid {pid}: {first}", hint=PERMISSION_HINT)
        raise SamplerError(f"py-spy dump of pid {pid} failed: {first}")
    return parse_dump(done.stdout)


def dump_record(t: float, pid: int, role: str, threads: list[dict[str, Any]]) -> dict[str, Any]:
    """Return one ``samples/pyspy.jsonl`` line."""
    return {"t": t, "pid": pid, "role": role, "threads": threads}


def recorder(pid: int, out: Path, log_path: Path, rate: int = 20) -> ManagedProcess:
    """Return (unstarted) a ``py-spy record`` of ``pid`` to speedscope JSON, idle threads kept.

    Stopped with SIGINT, on which py-spy writes the file; non-blocking so a long recording never
    pauses the server.
    """
    argv = [
        py_spy_binary(), "record", "--pid", str(pid), "--idle", "--nonblocking", "--rate", str(rate),
        "--format", "speedscope", "--output", str(out),
    ]
    return ManagedProcess(
        f"py-spy-record-{pid}", argv, log_path, ready=lambda: True, stop_signal=signal.SIGINT
    )


class PySpySampler:
    """Dumps every target process in turn.

    A dump can fail for a moment (a thread exiting while py-spy reads it); only a permission
    error before any dump ever worked disables the sampler, with one warning, and the run goes on
    without stacks. A process that has exited is no longer dumped.
    """

    def __init__(
        self,
        targets: Mapping[str, Sequence[int]],
        *,
        clock: Callable[[], float] = time.time,
        dumper: Callable[[int], list[dict[str, Any]]] = dump,
        on_warning: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.targets = {role: list(pids) for role, pids in targets.items()}
        self.clock = clock
        self.dumper = dumper
        self.on_warning = on_warning
        self.disabled = False
        self.worked = False
        self._gone: set[int] = set()
        self._warned: set[int] = set()

    def tick(self) -> list[dict[str, Any]]:
        """Return one record per target process dumped now."""
        records = []
        for role, pids in self.targets.items():
            for pid in pids:
                if self.disabled or pid in self._gone:
                    continue
                t = self.clock()
                try:
                    records.append(dump_record(t, pid, role, self.dumper(pid)))
                    self.worked = True
                except SamplerError as exc:
                    self._failed(pid, exc)
        return records

    def _failed(self, pid: int, exc: SamplerError) -> None:
        if not psutil.pid_exists(pid):
            self._gone.add(pid)
            self.on_warning(f"pid {pid} has exited; it is no longer dumped")
        elif exc.hint == PERMISSION_HINT and not self.worked:
            self.disabled = True
            self.on_warning(f"{exc.message}; the run goes on without stacks. Hint: {exc.hint}")
        elif pid not in self._warned:  # transient: said once per process, then retried silently
            self._warned.add(pid)
            self.on_warning(f"{exc.message} (retried at the next interval)")

