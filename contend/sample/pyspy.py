"""py-spy: stack dumps of server processes when they can explain something, and their summary.

A dump costs about 10-20 ms of CPU (py-spy reads the interpreter's symbols at every start), so the
sampler dumps when the Postgres forest shows lock waiters or a session idle in its transaction,
when attribution asks for a root's thread, and every target on a slow baseline, instead of every
process every two seconds (docs/performance.md). ``--nonblocking`` (the default) reads the stacks
without pausing the target: a paused lock holder would lengthen every wait behind it. Such a read
fails now and then; failed dumps are recorded and their share reported. Threads blocked in a
socket read (waiting for Postgres) are kept: a dump shows every thread. A whole-run
``py-spy record`` is also available.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from contend.diagnosis.clients import parse_app_name
from contend.errors import SamplerError
from contend.sample.namespaces import with_thread_states
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


CONNECTION_REPR = re.compile(r"<(?:[\w.]+\.)?(?:Connection|AsyncConnection|connection) ")


def _frame(frame: dict[str, Any]) -> dict[str, Any]:
    out = {"name": frame.get("name"), "filename": frame.get("filename"), "line": frame.get("line")}
    # dump --locals: addresses tell objects apart; only the repr (the class) of self and of a database
    # connection is kept (a connection in a frame tells the thread may be in a transaction)
    if frame.get("locals") is not None:
        out["locals"] = [
            {"name": var.get("name"), "addr": var.get("addr")}
            | ({"repr": str(var.get("repr") or "")[:80]}
               if var.get("name") == "self" or CONNECTION_REPR.match(str(var.get("repr") or "")) else {})
            for var in frame.get("locals") or ()
        ]
    return out


def parse_dump(text: str) -> list[dict[str, Any]]:
    """Return the threads of ``py-spy dump --json`` output in the record format (docs/records.md)."""
    return [
        {
            "thread_id": thread.get("thread_id"),
            "os_thread_id": thread.get("os_thread_id"),
            "name": thread.get("thread_name"),
            "idle": not thread.get("active", True),
            "active": bool(thread.get("active", True)),
            "frames": [_frame(f) for f in thread.get("frames", ())],
        }
        for thread in json.loads(text)
    ]


def dump(pid: int, *, timeout: float = 10.0, nonblocking: bool = False, with_locals: bool = False,
         cost: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Return the threads of process ``pid`` (innermost frame first); SamplerError when it fails.

    ``with_locals`` adds each frame's local variables (name, object address): the wait-for graph
    tells lock objects apart by them. It costs more (py-spy reads every local's repr). ``cost``,
    when given, receives the dump's ``cpu_s`` (py-spy's own user + system time) and ``wall_s``.
    """
    argv = [py_spy_binary(), "dump", "--json", "--pid", str(pid)]
    if nonblocking:
        argv.append("--nonblocking")
    if with_locals:
        argv.append("--locals")
    started = time.perf_counter()
    code, stdout, stderr, cpu_s = _run(argv, timeout)
    if cost is not None:
        cost.update(cpu_s=cpu_s, wall_s=time.perf_counter() - started)
    if code is None:
        raise SamplerError(f"py-spy dump of pid {pid} took more than {timeout:.0f} s")
    if code != 0:
        message = (stderr or stdout).strip().splitlines()
        first = message[0] if message else f"exit code {code}"
        if any(word in stderr for word in ("Permission denied", "Operation not permitted")):
            raise SamplerError(f"py-spy cannot read pid {pid}: {first}", hint=PERMISSION_HINT)
        raise SamplerError(f"py-spy dump of pid {pid} failed: {first}")
    return with_thread_states(pid, parse_dump(stdout))  # a container's threads: their state as seen here


def _run(argv: list[str], timeout: float) -> tuple[int | None, str, str, float]:
    """Run a command; return (exit code or None on timeout, stdout, stderr, its CPU seconds).

    Reaped with ``os.wait4`` for the child's own resource usage: the process-wide children's
    total would mix in the dumps other sampler threads take at the same time.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        fired = threading.Event()

        def kill() -> None:
            # os.kill, not proc.kill(): Popen.send_signal polls first, which reaps an exited child
            # and leaves the wait4 below without one (ECHILD). Unreaped, the pid cannot be reused.
            fired.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return (None if fired.is_set() else code), text, errors, usage.ru_utime + usage.ru_stime


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


def stack_triggers(tick: Mapping[str, Any], backends: Iterable[Mapping[str, Any]], *,
                   wait_s: float, idle_in_tx_s: float) -> list[tuple[str, set[int] | None]]:
    """Return why stacks could explain this Postgres tick now, and whose: ``(reason, client pids)``.

    ``lock waiters`` when a backend has waited on a lock for ``wait_s`` or more (the clients of
    those waiters, of their blockers and of the roots), ``idle in transaction`` when a session has
    sat idle inside its transaction for ``idle_in_tx_s`` or more (its client). A wait's age is the
    tick's ``waits`` age (``pg_locks.waitstart``), else its query's age. The client pid comes from
    the reference server's application_name; None (every target) when no backend of the reason
    names its client.
    """
    rows = list(backends)
    ages = {int(w["pid"]): float(w["age"]) for w in tick.get("waits") or ()}
    waiters = [b for b in rows if b.get("blocked_by")
               and ages.get(int(b["pid"]), b.get("query_age") or 0.0) >= wait_s]
    involved = {int(r["pid"]) for r in tick.get("roots") or ()} if waiters else set()
    for b in waiters:
        involved.add(int(b["pid"]))
        involved.update(int(p) for p in b["blocked_by"])
    idle = [b for b in rows
            if b.get("state") == "idle in transaction" and (b.get("state_age") or 0.0) >= idle_in_tx_s]
    found: list[tuple[str, set[int] | None]] = []
    groups = (("lock waiters", [b for b in rows if int(b["pid"]) in involved]), ("idle in transaction", idle))
    for reason, group in groups:
        if group:
            clients = {c.pid for b in group if (c := parse_app_name(b.get("app"))) is not None}
            found.append((reason, clients or None))
    return found


class PySpySampler:
    """Dumps target processes when asked (``request``), and every target on a slow baseline.

    The one hook for "take stacks now for reason X": ``request(reason, pids)`` from any thread (the
    Postgres loop when the forest shows waiters or idle-in-transaction holders); ``dump_now(pid,
    reason)`` when the caller needs the threads back (the attribution of a root's thread). A process
    is dumped at most once per ``min_interval_s`` on request, and requested dumps share a budget of
    ``max_per_s`` dumps a second (a bucket that holds one dump of every target, so the first
    incident is seen whole; a request the bucket cannot pay is dropped, and asked again by the next
    tick if its cause lasts): under constant contention py-spy costs a bounded share of a core.
    Every ``baseline_s`` every target is dumped whatever happens, so the summary also knows the
    quiet times (at most one dump of each target per ``baseline_s``, outside the budget).
    Attribution's dumps are never refused, but they draw on the budget; dumps taken elsewhere ask
    for their share with ``spend``.
    Every dump, and every failed one, is one record with its reason (docs/records.md), handed to
    ``write``.

    A dump can fail for a moment (a thread exiting while py-spy reads it, more often when
    ``--nonblocking``); only a permission error before any dump ever worked disables the sampler,
    with one warning, and the run goes on without stacks. A process that has exited is no longer
    dumped.
    """

    def __init__(
        self,
        targets: Mapping[str, Sequence[int]],
        *,
        clock: Callable[[], float] = time.time,
        dumper: Callable[[int], list[dict[str, Any]]] = dump,
        on_warning: Callable[[str], None] = lambda message: None,
        write: Callable[[list[dict[str, Any]]], None] = lambda records: None,
        min_interval_s: float = 5.0,
        max_per_s: float = 0.5,
        baseline_s: float = 30.0,
        nonblocking: bool = False,
    ) -> None:
        self.targets = {role: list(pids) for role, pids in targets.items()}
        self.roles = {pid: role for role, pids in self.targets.items() for pid in pids}
        self.clock = clock
        self.dumper = dumper
        self.on_warning = on_warning
        self.write = write
        self.min_interval_s = min_interval_s
        self.max_per_s = max_per_s
        self._tokens = float(len(self.roles))
        self._filled_at = time.monotonic()
        self.baseline_s = baseline_s
        self.nonblocking = nonblocking
        self.disabled = False
        self.worked = False
        self._gone: set[int] = set()
        self._warned: set[int] = set()
        self._last: dict[int, float] = {}
        self._pending: dict[int, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def request(self, reason: str, pids: Iterable[int] | None = None) -> None:
        """Ask for stacks of ``pids`` (targets only; None: every target) for ``reason``, soon."""
        now = time.monotonic()
        wanted = self.roles if pids is None else [p for p in pids if p in self.roles]
        with self._lock:
            for pid in wanted:
                if now - self._last.get(pid, float("-inf")) >= self.min_interval_s:
                    self._pending.setdefault(pid, reason)
            if self._pending:
                self._wake.set()

    def dump_now(self, pid: int, reason: str) -> list[dict[str, Any]]:
        """Dump ``pid`` now, record it, and return its threads; SamplerError when it fails."""
        if self.disabled:
            raise SamplerError("py-spy is disabled for this run")
        record = self._dump(pid, reason)
        self.write([record])
        if "error" in record:
            raise SamplerError(str(record["error"]))
        return list(record["threads"])

    def dump_now_for(self, reason: str) -> Callable[[int], list[dict[str, Any]]]:
        """Return ``dump_now`` with its reason bound: a dumper for another sampler."""
        return lambda pid: self.dump_now(pid, reason)

    def tick(self, reason: str = "baseline") -> list[dict[str, Any]]:
        """Dump every target now, outside the budget; return one record per process (failed ones too)."""
        return [self._dump(pid, reason, budget=False) for pid in list(self.roles) if not self._skip(pid)]

    def spend(self, dumps: int) -> bool:
        """Take ``dumps`` from the budget if it holds them (for dumps taken elsewhere, such as the
        wait-for graph's rounds with locals); False, taking nothing, when it does not."""
        with self._lock:
            self._refill()
            if self._tokens < dumps:
                return False
            self._tokens -= dumps
            return True

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(len(self.roles)), self._tokens + (now - self._filled_at) * self.max_per_s)
        self._filled_at = now

    def take_pending(self) -> list[dict[str, Any]]:
        """Dump the processes requested since the last call that the budget pays; return their records.

        The least recently dumped go first.
        """
        with self._lock:
            pending, self._pending = self._pending, {}
            self._wake.clear()
            self._refill()
            paid = int(max(0.0, self._tokens))
        order = sorted(pending, key=lambda pid: self._last.get(pid, float("-inf")))
        return [self._dump(pid, pending[pid]) for pid in order[:paid] if not self._skip(pid)]

    def run(self, stop: threading.Event) -> None:
        """Serve requests and the baseline until ``stop``; records go to ``write``.

        An unexpected error is reported and the loop goes on: stacks must not stop for the rest of
        the run because one round failed.
        """
        next_baseline = time.monotonic()
        while not stop.is_set():
            try:
                if time.monotonic() >= next_baseline:
                    next_baseline = time.monotonic() + self.baseline_s
                    self.write(self.tick("baseline"))
                self.write(self.take_pending())
            except Exception as exc:  # reported, then the next round is tried
                self.on_warning(f"a round of dumps failed: {exc!r}")
            self._wake.wait(max(0.0, next_baseline - time.monotonic()))
            if stop.is_set():
                return

    def stop_waiting(self) -> None:
        """Wake ``run`` so it sees its stop event at once."""
        self._wake.set()

    def _skip(self, pid: int) -> bool:
        return self.disabled or pid in self._gone

    def _dump(self, pid: int, reason: str, budget: bool = True) -> dict[str, Any]:
        with self._lock:
            self._last[pid] = time.monotonic()
            self._tokens -= 1.0 if budget else 0.0
        record: dict[str, Any] = {"t": self.clock(), "pid": pid, "role": self.roles.get(pid, "client"),
                                  "reason": reason, "nonblocking": self.nonblocking}
        try:
            record["threads"] = self.dumper(pid)
            self.worked = True
        except SamplerError as exc:
            record.update(threads=[], error=exc.message)
            self._failed(pid, exc)
        return record

    def _failed(self, pid: int, exc: SamplerError) -> None:
        if not psutil.pid_exists(pid):
            self._gone.add(pid)
            self.on_warning(f"pid {pid} has exited; it is no longer dumped")
        elif exc.hint == PERMISSION_HINT and not self.worked:
            self.disabled = True
            self.on_warning(f"{exc.message}; the run goes on without stacks. Hint: {exc.hint}")
        elif pid not in self._warned:  # transient: said once per process, then retried silently
            self._warned.add(pid)
            self.on_warning(f"{exc.message} (retried at the next request)")
