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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from contend.errors import SamplerError
from contend.stack.process import ManagedProcess

PERMISSION_HINT = "py-spy needs root or the SYS_PTRACE capability (docker run --cap-add SYS_PTRACE)"

# How the threads of a role are named in a sentence ("7 of 8 result workers ...").
ROLE_LABELS = {"worker": "result workers", "web": "web threads"}

_PSYCOPG = ("/psycopg/", "/psycopg_binary/", "/psycopg_c/", "/psycopg2/")
_SOCKET = ("/socket.py", "/selectors.py", "/ssl.py", "/select.py", "/asyncio/")
_LOCK = ("/threading.py", "/queue.py")


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


def is_own(frame: Mapping[str, Any], own_code_prefixes: Sequence[str]) -> bool:
    """Tell whether a frame's file is in the server's own code (a prefix occurs in its path)."""
    filename = str(frame.get("filename") or "")
    return any(prefix in filename for prefix in own_code_prefixes)


def own_chain(frames: Sequence[Mapping[str, Any]], own_code_prefixes: Sequence[str], limit: int = 3) -> str:
    """Return the innermost own-code functions, outermost first: ``"result -> emit -> save"``."""
    names = [str(f.get("name")) for f in frames if is_own(f, own_code_prefixes)][:limit]
    return " -> ".join(reversed(names))


def thread_state(thread: Mapping[str, Any], own_code_prefixes: Sequence[str]) -> str:
    """Classify a thread by the frames inside its innermost own-code frame.

    ``psycopg wait`` (in the driver: waiting on Postgres), ``socket wait`` (a socket or selector,
    counted as waiting on Postgres too), ``lock wait`` (a threading lock or queue), ``running``
    (py-spy saw it active) or ``idle``.
    """
    inner = []
    for frame in thread.get("frames", ()):
        if is_own(frame, own_code_prefixes):
            break
        inner.append(str(frame.get("filename") or ""))
    if any(p in f for f in inner for p in _PSYCOPG):
        return "psycopg wait"
    if any(p in f for f in inner for p in _SOCKET):
        return "socket wait"
    if any(f.endswith(p) for f in inner for p in _LOCK):
        return "lock wait"
    return "running" if thread.get("active") else "idle"


def waits_on_postgres(thread: Mapping[str, Any], own_code_prefixes: Sequence[str]) -> bool:
    """Tell whether a thread waits in psycopg or on a socket."""
    return thread_state(thread, own_code_prefixes) in ("psycopg wait", "socket wait")


def summarize_stacks(dumps: Iterable[Mapping[str, Any]], own_code_prefixes: Sequence[str]) -> list[str]:
    """Return one sentence per (role, state, innermost own function), most threads first.

    Only threads running the server's own code count (interpreter and pool threads do not):
    ``"7 of 8 result workers in psycopg wait <- _update_job_progress"``.
    """
    totals: Counter[str] = Counter()
    groups: Counter[tuple[str, str, str]] = Counter()
    for record in dumps:
        role = str(record.get("role") or "process")
        for thread in record.get("threads", ()):
            own = [f for f in thread.get("frames", ()) if is_own(f, own_code_prefixes)]
            if not own:
                continue
            totals[role] += 1
            groups[(role, thread_state(thread, own_code_prefixes), str(own[0].get("name")))] += 1
    ordered = sorted(groups.items(), key=lambda item: (-item[1], item[0]))
    return [
        f"{n} of {totals[role]} {ROLE_LABELS.get(role, role + ' threads')} in {state} <- {function}"
        for (role, state, function), n in ordered
    ]


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

