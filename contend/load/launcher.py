"""The launcher: checks a load plan, runs locust in child processes, follows them, returns totals.

contend's own process never imports locust (it monkey-patches the interpreter with gevent); the
child processes run ``contend.load.child`` and write the records into the ``load/`` folder.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from contend.errors import ChildExit, ConfigError, LoadError, StackError
from contend.load.config import BatchedPost, Locustfile, LocustWorkload, PullWorkers
from contend.load.plan import DEFAULT_TOKEN_VARS, TOKEN_ENV, Plan, PlannedWorkload, read_token
from contend.load.records import LoadSummary, read_records
from contend.stack.process import ManagedProcess, free_port
from contend.target import check_target

MAX_WORKLOADS = 16  # user classes the load processes define (contend.load.users.SLOTS)
POLL_S = 0.5


@dataclass(frozen=True)
class LoadTarget:
    """Where the load goes, and what the target holds (from ``stack.info()["refserver"]`` or flags)."""

    base_url: str
    token_env: str | None = None
    """The variable holding the API token; None: ANTENNA_TOKEN, then CONTEND_TOKEN."""
    token: SecretStr | None = field(default=None, repr=False)
    """The API token itself, when contend knows it (the embedded server's): beats ``token_env``. It
    reaches the load processes only through their own environment, never argv, files or reports."""
    job_ids: Sequence[int] = ()
    pipeline_slug: str | None = None
    image_ids: Mapping[int, Sequence[str]] = field(default_factory=dict)
    """Per job, for realistic bodies of batched POSTs."""
    allow_remote: bool = False


@dataclass(frozen=True)
class LoadProgress:
    """The state of a running load, as its hub last wrote it (about every half second)."""

    state: str
    elapsed_s: float
    requests_ok: int
    requests_failed: int
    in_flight: int
    p95_s: float | None
    results: int
    iterations: int = 0
    """Task runs of a locustfile's users so far."""


def read_token_for(target: LoadTarget) -> str:
    """Return the target's token, else the one in the environment, or raise a one-line ConfigError."""
    if target.token is not None:
        return target.token.get_secret_value()
    names = (target.token_env,) if target.token_env else DEFAULT_TOKEN_VARS
    token = read_token(names)
    if token is None:
        raise ConfigError(
            f"no API token: set {' or '.join(names)} in the environment",
            hint="the token is read from the environment only, never from the command line",
        )
    return token


def optional_token(target: LoadTarget) -> str | None:
    """Return the target's token when it has one (a locustfile or a command may do without)."""
    try:
        return read_token_for(target)
    except ConfigError:
        return None


def target_environment(target: LoadTarget) -> dict[str, str]:
    """Return what a user's own load learns of the target: CONTEND_BASE_URL, CONTEND_JOB_IDS and,
    when the target has a token, CONTEND_TOKEN (in the environment only, never argv or files)."""
    env = {"CONTEND_BASE_URL": target.base_url.rstrip("/"),
           "CONTEND_JOB_IDS": ",".join(str(j) for j in target.job_ids)}
    token = optional_token(target)
    return env | ({"CONTEND_TOKEN": token} if token else {})


def make_plan(
    workloads: Sequence[LocustWorkload], target: LoadTarget, *, workers: int = 0,
    workers_timeout_s: float = 60.0,
) -> Plan:
    """Check every input against the target (no traffic is sent) and return the plan to run."""
    check_target(target.base_url, target.allow_remote)
    if not workloads:
        raise ConfigError("no workload to run")
    if len(workloads) > MAX_WORKLOADS:
        raise ConfigError(f"at most {MAX_WORKLOADS} workloads run at once, got {len(workloads)}")
    if workers < 0:
        raise ConfigError("the number of load workers must be >= 0")
    planned = []
    for w in workloads:
        if isinstance(w, BatchedPost):
            job = w.job if w.job is not None else (target.job_ids[0] if target.job_ids else None)
            if job is None:
                raise ConfigError("batched_post needs a job id",
                                  hint="pass --job ID (or set job: in the scenario)")
            images: tuple[str, ...] = ()
            if w.body == "realistic":
                images = tuple(str(i) for i in target.image_ids.get(job, ()))
                if not images or not target.pipeline_slug:
                    raise ConfigError(
                        f"realistic bodies need the pipeline slug and the image ids of job {job}",
                        hint="use body: error, or a target that lists its images (the reference server does)",
                    )
            planned.append(PlannedWorkload(workload=w, job=job, pipeline_slug=target.pipeline_slug,
                                           image_ids=images))
        elif isinstance(w, Locustfile):
            path = Path(w.path).resolve()
            if not path.is_file():
                raise ConfigError(f"locustfile {w.path}: no such file",
                                  hint="the path is relative to the scenario file")
            planned.append(PlannedWorkload(workload=w.model_copy(update={"path": str(path)}),
                                           job_ids=tuple(target.job_ids)))
        elif isinstance(w, PullWorkers):
            slug = w.pipeline_slug or target.pipeline_slug
            if not slug:
                raise ConfigError("pull_workers needs a pipeline slug", hint="pass --pipeline SLUG")
            planned.append(PlannedWorkload(workload=w, pipeline_slug=slug))
    return Plan(base_url=target.base_url.rstrip("/"), allow_remote=target.allow_remote,
                workloads=tuple(planned), workers=workers, workers_timeout_s=workers_timeout_s)


class LoadRun:
    """A load run in child processes: ``start()``, then ``poll()`` as you like, ``wait()`` or ``stop()``.

    ``load_workers`` local worker processes run under a master (0: one standalone process);
    ``remote_workers`` more are awaited on ``master_bind`` (``contend load-worker --master``).
    """

    def __init__(
        self,
        workloads: Sequence[LocustWorkload],
        target: LoadTarget,
        out_dir: Path,
        *,
        load_workers: int = 0,
        remote_workers: int = 0,
        master_bind: str | None = None,
        workers_timeout_s: float = 60.0,
    ) -> None:
        if remote_workers < 0:
            raise ConfigError("the number of remote workers must be >= 0")
        self.plan = make_plan(workloads, target, workers=load_workers + remote_workers,
                              workers_timeout_s=workers_timeout_s)
        token = read_token_for(target) if self.plan.needs_token else optional_token(target)
        self.env = {**os.environ, **({TOKEN_ENV: token} if token else {})}
        self.out_dir = out_dir
        self.load_workers = load_workers
        self.master_bind = master_bind or f"127.0.0.1:{free_port()}"
        if remote_workers and master_bind is None:
            raise ConfigError("remote workers need a master address they can reach",
                              hint="pass --master-bind HOST:PORT")
        self.hub: ManagedProcess | None = None
        self.workers: list[ManagedProcess] = []
        self.stopped = False
        self.started_at: float | None = None

    @property
    def master_address(self) -> str:
        """The HOST:PORT workers connect to (valid after start())."""
        return self.master_bind

    def start(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        plan_path = self.out_dir / "plan.json"
        self.plan.write(plan_path)
        progress = self.out_dir / "progress.json"
        progress.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "contend.load.child", "hub", "--plan", str(plan_path)]
        if self.plan.workers:
            argv += ["--bind", self.master_bind]
        self.started_at = time.time()
        self.hub = ManagedProcess("load-hub", argv, self.out_dir / "hub.log", ready=progress.exists,
                                  ready_timeout=60.0, env=self.env)
        try:
            try:
                self.hub.start()
            except StackError as error:  # e.g. a locustfile that does not load
                raise LoadError(f"the load process exited while starting{self._last_error()}",
                                hint=error.hint) from None
            host, port = self.master_bind.rsplit(":", 1)
            connect = f"{'127.0.0.1' if host in ('0.0.0.0', '*', '') else host}:{port}"
            for i in range(self.load_workers):
                worker = ManagedProcess(
                    f"load-worker-{i}",
                    [sys.executable, "-m", "contend.load.child", "worker", "--master", connect],
                    self.out_dir / f"worker-{i}.log", ready=lambda: True, env=self.env,
                )
                self.workers.append(worker)
                worker.start()
        except BaseException:
            self.stop()
            raise

    def poll(self) -> LoadProgress | None:
        """Return the last progress the hub wrote, None before its first."""
        try:
            p = json.loads((self.out_dir / "progress.json").read_text())
        except (OSError, ValueError):
            return None
        started = p.get("started_at") or self.started_at or time.time()
        return LoadProgress(
            state=p["state"], elapsed_s=max(0.0, p["t"] - started), requests_ok=p["ok"],
            requests_failed=p["failed"], in_flight=p["in_flight"], p95_s=p["p95_s"], results=p["results"],
            iterations=p.get("iterations", 0),
        )

    def running(self) -> bool:
        return self.hub is not None and self.hub.alive()

    def stop(self) -> None:
        """Stop the load cleanly (the hub collects what the workers hold), then every process."""
        self.stopped = True
        if self.hub is not None:
            self.hub.stop(timeout=30.0)  # SIGTERM: the hub halts the users and writes the rest
        for worker in self.workers:
            worker.stop(timeout=10.0)

    def wait(
        self,
        progress: Callable[[LoadProgress], None] | None = None,
        stop: threading.Event | None = None,
    ) -> LoadSummary:
        """Follow the run to its end (or until ``stop`` is set); return the totals of its records."""
        assert self.hub is not None, "start() first"
        try:
            while self.hub.alive():
                if stop is not None and stop.is_set():
                    self.stop()
                    break
                if progress is not None and (p := self.poll()) is not None:
                    progress(p)
                time.sleep(POLL_S)
        finally:
            code = self.hub.proc.returncode if self.hub.proc is not None else None
            asked = self.stopped  # stop() below marks every run stopped; only an earlier stop was ours
            self.stop()
        if progress is not None and (p := self.poll()) is not None:
            progress(p)
        if code == ChildExit.NO_WORKERS:
            raise LoadError(
                f"not all {self.plan.workers} load workers joined the master at {self.master_bind}",
                hint=self.hub.log_tail(),
            )
        if code not in (ChildExit.OK, ChildExit.PARTIAL, None) and not (asked and self.stopped_early(code)):
            raise LoadError(f"the load process exited with code {code}{self._last_error()}",
                            hint=self.hub.log_tail())
        status = "ok" if code == ChildExit.OK else "partial"
        return LoadSummary.from_records(read_records(self.out_dir), status=status)

    def _last_error(self) -> str:
        """``": <message>"`` of the hub log's last ERROR line (a locustfile that does not load), or ""."""
        try:
            lines = (self.out_dir / "hub.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line.split(" ERROR ", 1)[1] for line in lines if " ERROR " in line]
        return f": {errors[-1]}" if errors else ""

    def stopped_early(self, code: int | None) -> bool:
        # A negative code is a signal: ours when stop() ran before the hub exited by itself.
        return code is not None and code < 0 and self.stopped


def run_load(
    workloads: Sequence[LocustWorkload],
    target: LoadTarget,
    out_dir: Path,
    *,
    load_workers: int = 0,
    progress: Callable[[LoadProgress], None] | None = None,
    stop: threading.Event | None = None,
    remote_workers: int = 0,
    master_bind: str | None = None,
) -> LoadSummary:
    """Run ``workloads`` against ``target``, write records into ``out_dir``, return the totals.

    Blocks until the plan is done or ``stop`` is set; every process it starts is stopped on return.
    """
    run = LoadRun(workloads, target, out_dir, load_workers=load_workers, remote_workers=remote_workers,
                  master_bind=master_bind)
    run.start()
    return run.wait(progress, stop)


def run_remote_worker(master: str, log_dir: Path, *, allow_remote: bool = False,
                      token_env: str | None = None) -> None:
    """Join the master at ``master`` (HOST:PORT) as a load worker until it ends the run.

    The worker gets the plan from the master but checks the target itself (``allow_remote`` is this
    machine's decision) and reads the token from its own environment; its records travel to the
    master over locust's messaging and land in the master's ``load/`` folder.
    """
    host, _, port = master.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--master must be HOST:PORT, got {master!r}")
    # A locustfile may need no token: the worker checks when the plan comes (exit code NO_TOKEN).
    token = optional_token(LoadTarget(base_url="http://localhost", token_env=token_env))
    argv = [sys.executable, "-m", "contend.load.child", "worker", "--master", master]
    if allow_remote:
        argv.append("--allow-remote")
    worker = ManagedProcess("load-worker", argv, log_dir / "worker.log", ready=lambda: True,
                            env={**os.environ, **({TOKEN_ENV: token} if token else {})})
    with worker:
        assert worker.proc is not None
        code = worker.proc.wait()
    if code != 0:
        raise LoadError(f"the load worker exited with code {code}", hint=worker.log_tail())
