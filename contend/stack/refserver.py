"""The reference server's lifecycle: web processes and the result worker pool, on a running Postgres + NATS.

Web process 0 applies the migrations and creates the fixtures before it listens; the other web
processes, the workers and the image server (the object storage the tasks' ``image_url`` name, on
a port of its own) start at the same time. Each process is a ManagedProcess logging
into ``<folder>/<name>.log`` and writing ``<folder>/ready/<name>.json`` once it serves.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contend.errors import StackError
from contend.flags import resolve_flags
from contend.stack.process import Lifecycle, ManagedProcess, free_port

# Environment the server's processes keep from ours; everything else they need is set explicitly.
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "CONTEND_STATE_DIR", "PYTHONPATH")


@dataclass(frozen=True)
class RefServerOptions:
    """What reference server to run: a preset, flag overrides, process counts and fixture sizes."""

    preset: str | None = "pr-1261"
    flags: Mapping[str, str] = field(default_factory=dict)
    web_concurrency: int | None = None
    worker_concurrency: int | None = None
    jobs: int = 1
    images_per_job: int = 100
    token_env: str | None = None
    """The variable holding the API key the fixtures create; none: a throw-away key."""

    def resolved_flags(self) -> dict[str, str]:
        """Return every flag's value; explicit process counts win over the flags."""
        overrides = dict(self.flags)
        if self.web_concurrency is not None:
            overrides["WEB_CONCURRENCY"] = str(self.web_concurrency)
        if self.worker_concurrency is not None:
            overrides["ML_WORKER_CONCURRENCY"] = str(self.worker_concurrency)
        return resolve_flags(self.preset, overrides)


class RefServer(Lifecycle):
    """The web tier (WEB_CONCURRENCY processes on one port) and ML_WORKER_CONCURRENCY result workers."""

    def __init__(self, folder: Path, dsn: str, nats_url: str, options: RefServerOptions,
                 ready_timeout: float = 120.0) -> None:
        self.folder = folder
        self.dsn = dsn
        self.nats_url = nats_url
        self.options = options
        self.flags = options.resolved_flags()
        self.ready_timeout = ready_timeout
        self.port = 0
        self.images_port = 0
        # A throw-away key for this local server; it reaches the setup process through its
        # environment only and is never logged.
        self.token = os.environ.get(options.token_env or "") or secrets.token_hex(20)
        self.fixtures: dict[str, Any] = {}
        self.web: list[ManagedProcess] = []
        self.workers: list[ManagedProcess] = []
        self.images: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def images_url(self) -> str:
        """The images' public base URL: each task's image_url is this plus the image's path."""
        return f"http://127.0.0.1:{self.images_port}/images/"

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in _PASS_ENV}
        env.update(self.flags)
        env.update(CONTEND_REF_DSN=self.dsn, CONTEND_REF_NATS=self.nats_url,
                   DJANGO_SETTINGS_MODULE="contend.refserver.settings", PYTHONUNBUFFERED="1", **extra)
        return env

    def _process(self, name: str, args: list[str], **env: str) -> ManagedProcess:
        ready = self.folder / "ready" / f"{name}.json"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "contend.refserver", *args, "--ready", str(ready)]
        return ManagedProcess(name, argv, self.folder / f"{name}.log", ready=ready.exists,
                              ready_timeout=self.ready_timeout, env=self._env(**env))

    def start(self) -> None:
        (self.folder / "ready").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.images_port = free_port()
        while self.images_port == self.port:
            self.images_port = free_port()
        fixtures = self.folder / "fixtures.json"
        fixtures.unlink(missing_ok=True)
        first = self._process(
            "refserver-web-0",
            ["web", "--port", str(self.port), "--setup", str(fixtures), "--jobs", str(self.options.jobs),
             "--images", str(self.options.images_per_job)],
            CONTEND_REF_TOKEN=self.token, CONTEND_REF_IMAGES_URL=self.images_url,
        )
        # The others need the tables only when a request or a task arrives, so everything starts
        # at once; the server is ready when web process 0 has set up and every process listens.
        self.web = [first] + [self._process(f"refserver-web-{n}", ["web", "--port", str(self.port)])
                              for n in range(1, int(self.flags["WEB_CONCURRENCY"]))]
        self.workers = [self._process(f"refserver-worker-{n}", ["worker", "--index", str(n)])
                        for n in range(int(self.flags["ML_WORKER_CONCURRENCY"]))]
        self.images = self._process("refserver-images", ["images", "--port", str(self.images_port)])
        self._start_together(self.processes)
        self.fixtures = json.loads(fixtures.read_text())

    def _start_together(self, processes: list[ManagedProcess]) -> None:
        """Start ``processes`` at once and wait until each is ready.

        They are spawned from this thread: the kernel's parent-death signal follows the thread that
        forked a child, so spawning from short-lived pool threads would kill them when those end.
        """
        checks = {p.name: p.ready for p in processes}
        for p in processes:
            p.ready = lambda: True
            p.start()
        deadline = time.monotonic() + self.ready_timeout
        waiting = list(processes)
        while waiting:
            for p in list(waiting):
                if not p.alive():
                    raise StackError(f"{p.name} exited with code {p.proc.returncode if p.proc else '?'} "
                                     "while starting", hint=p.log_tail())
                if checks[p.name]():
                    waiting.remove(p)
            if waiting and time.monotonic() > deadline:
                raise StackError(f"{waiting[0].name} did not become ready within {self.ready_timeout:.0f} s",
                                 hint=waiting[0].log_tail())
            time.sleep(0.1)

    def stop(self) -> None:
        everything = self.processes
        if everything:
            with ThreadPoolExecutor(max_workers=len(everything)) as pool:
                list(pool.map(lambda p: p.stop(timeout=5.0), everything))

    @property
    def processes(self) -> list[ManagedProcess]:
        return self.web + self.workers + ([self.images] if self.images is not None else [])

    def pids(self) -> dict[str, list[int]]:
        """Return the OS pids a sampler (py-spy) should look at, by tier."""
        return {"web": [p.pid for p in self.web if p.alive()],
                "workers": [p.pid for p in self.workers if p.alive()]}

    def info(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "images_url": self.images_url,
            "token": self.token,
            "job_ids": list(self.fixtures.get("job_ids", [])),
            "pipeline_slug": self.fixtures.get("pipeline_slug"),
            "project_id": self.fixtures.get("project_id"),
            "flags": dict(self.flags),
            "pids": self.pids(),
        }

