"""The plan a load process runs: the workloads, resolved against one target, without the token.

The launcher writes it as ``load/plan.json``; the master (or the standalone process) reads it and
hands it to every worker over locust's messaging, so a worker on another machine needs nothing but
the master's address and its own token.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from contend.load.config import Workload

TOKEN_ENV = "CONTEND_LOAD_TOKEN"
"""The variable through which a load process receives the token (never argv)."""

DEFAULT_TOKEN_VARS = ("ANTENNA_TOKEN", "CONTEND_TOKEN")


class PlannedWorkload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    workload: Workload
    job: int | None = None
    """batched_post: the job every POST goes to."""
    pipeline_slug: str | None = None
    image_ids: tuple[str, ...] = ()
    """batched_post with realistic bodies: the job's image ids."""
    job_ids: tuple[int, ...] = ()
    """locustfile: the target's jobs (CONTEND_JOB_IDS of its user classes)."""


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    allow_remote: bool = False
    workloads: tuple[PlannedWorkload, ...]
    workers: int = 0
    """Load worker processes the master waits for (0: one standalone process)."""
    workers_timeout_s: float = 60.0

    @property
    def needs_token(self) -> bool:
        """Whether contend's own users run (they send the target's token; a locustfile may not)."""
        return any(p.workload.kind != "locustfile" for p in self.workloads)

    @classmethod
    def read(cls, path: Path) -> Plan:
        return cls.model_validate_json(path.read_text())

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))


def read_token(names: tuple[str, ...] = DEFAULT_TOKEN_VARS) -> str | None:
    """Return the first non-empty token among the environment variables ``names``."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None
