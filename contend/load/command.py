"""A ``command`` workload: any program as the load, next to the load processes (docs/your-load.md).

The program runs in its own process group (``ManagedProcess``) with the target in its environment
(``CONTEND_BASE_URL``, ``CONTEND_TOKEN`` when the target has one, ``CONTEND_JOB_IDS``) and
``CONTEND_REQUEST_RECORDS``, a file of the ``load/`` folder where it may write request records
(docs/records.md), which are then read like contend's own. Its stdout and stderr go to
``load/command-<k>.log``; a non-zero exit code or a run past ``timeout_s`` fails the variant with
the program's last lines. ``run_workloads`` runs the commands and the locust workloads side by side.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from contend.errors import ConfigError
from contend.load.config import AnyWorkload, CommandLoad, Locustfile, LocustWorkload
from contend.load.launcher import LoadProgress, LoadTarget, run_load, target_environment
from contend.load.records import LoadSummary, read_records
from contend.stack.command import masked, tail
from contend.stack.process import ManagedProcess

RECORDS_ENV = "CONTEND_REQUEST_RECORDS"
"""The variable naming the file where a command may write its request records."""
POLL_S = 0.5
LAST_LINES = 8


class CommandRun:
    """One command workload: ``start()``, then ``failure()`` once it ended (None: exit code 0)."""

    def __init__(self, workload: CommandLoad, target: LoadTarget, out_dir: Path, index: int) -> None:
        self.workload = workload
        self.log = out_dir / f"command-{index}.log"
        records = out_dir / f"requests-command-{index}.jsonl"
        given = target_environment(target)
        env = {**os.environ, **given, **workload.env, RECORDS_ENV: str(records)}
        self.secrets = [given["CONTEND_TOKEN"]] if "CONTEND_TOKEN" in given else []
        """Masked in the program's log when it ends (a program may print what it was given)."""
        self.process = ManagedProcess(f"load-command-{index}", workload.run, self.log, ready=lambda: True,
                                      env=env, cwd=Path(workload.cwd) if workload.cwd else None)
        self.deadline = 0.0
        self.timed_out = False

    def start(self) -> None:
        self.deadline = time.monotonic() + self.workload.timeout_s
        self.process.launch()

    def running(self) -> bool:
        if self.process.alive() and time.monotonic() > self.deadline:
            self.timed_out = True
            self.stop()
        return self.process.alive()

    def stop(self) -> None:
        self.process.stop(timeout=10.0)
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace")
            if any(secret in text for secret in self.secrets):
                self.log.write_text(masked(text, self.secrets))

    def failure(self) -> str | None:
        """Why the command failed its variant (with its last lines), None when it exited with 0."""
        proc = self.process.proc
        code = proc.returncode if proc is not None else None
        name = Path(self.workload.run[0]).name
        if self.timed_out:
            why = f"the load command {name} ran past its timeout_s ({self.workload.timeout_s:g} s)"
        elif code:
            why = f"the load command {name} exited with code {code}"
        else:
            return None
        return f"{why}; {tail(self.log, self.secrets, LAST_LINES)}"


def run_workloads(
    workloads: Sequence[AnyWorkload],
    target: LoadTarget,
    out_dir: Path,
    *,
    progress: Callable[[LoadProgress], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[LoadSummary, str | None]:
    """Run the commands and the locust workloads side by side; return the totals of every record and
    why a command failed (None when none did). Every process started is stopped on return."""
    stop = stop or threading.Event()
    out_dir.mkdir(parents=True, exist_ok=True)
    own: list[LocustWorkload] = [w for w in workloads if not isinstance(w, CommandLoad)]
    commands = [CommandRun(w, target, out_dir, i)
                for i, w in enumerate(w for w in workloads if isinstance(w, CommandLoad))]
    started = time.time()
    status = "ok"
    try:
        for command in commands:
            command.start()
        if own:
            status = run_load(own, target, out_dir, progress=progress, stop=stop).status
        while any(c.running() for c in commands):
            if stop.is_set():
                status = "partial"
                break
            if progress is not None and not own:
                progress(LoadProgress(state="running", elapsed_s=time.time() - started, requests_ok=0,
                                      requests_failed=0, in_flight=0, p95_s=None, results=0))
            stop.wait(POLL_S)
    finally:
        for command in commands:
            command.stop()
    failures = [f for c in commands if (f := c.failure()) is not None]
    summary = LoadSummary.from_records(read_records(out_dir), status=status)
    return summary, (failures[0] if failures and status == "ok" else None)


def check_paths(workloads: Sequence[AnyWorkload]) -> None:
    """Refuse, before anything starts, a locustfile or a command folder that is not there."""
    for i, w in enumerate(workloads):
        if isinstance(w, Locustfile) and not Path(w.path).is_file():
            raise ConfigError(f"workloads[{i}].path: no locustfile {w.path}",
                              hint="the path is relative to the scenario file")
        if isinstance(w, CommandLoad) and w.cwd is not None and not Path(w.cwd).is_dir():
            raise ConfigError(f"workloads[{i}].cwd: no folder {w.cwd}",
                              hint="the folder is relative to the scenario file")
