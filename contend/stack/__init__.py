"""The stack: Postgres and NATS (and, when asked, the reference server) for one run.

Usable from Python without the CLI::

    with Stack(run_dir) as stack:
        print(stack.info())
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from contend.stack.nats import NatsServer
from contend.stack.postgres import EmbeddedPostgres, ExternalPostgres
from contend.stack.process import Lifecycle, ManagedProcess, reap_orphans
from contend.stack.refserver import RefServer, RefServerOptions

__all__ = ["RefServerOptions", "Stack"]


class Stack(Lifecycle):
    """Postgres (embedded, or external through ``dsn``) and NATS, started together, stopped together.

    With ``refserver`` options it also runs the reference server on them (``info()["refserver"]``).
    """

    def __init__(self, run_dir: Path, *, dsn: str | None = None,
                 refserver: RefServerOptions | None = None, keep_data: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.keep_data = keep_data
        """Keep Postgres' data directory and the NATS store after stop (logs are always kept)."""
        self.external_dsn = dsn
        self.refserver_options = refserver
        self.postgres: EmbeddedPostgres | ExternalPostgres | None = None
        self.nats: NatsServer | None = None
        self.refserver: RefServer | None = None
        self.reaped: list[str] = []
        self._exit = contextlib.ExitStack()

    @property
    def dsn(self) -> str:
        assert self.postgres is not None, "stack not started"
        return self.postgres.dsn

    @property
    def nats_url(self) -> str:
        assert self.nats is not None, "stack not started"
        return self.nats.url

    def start(self) -> None:
        self.reaped = reap_orphans()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.external_dsn:
                self.postgres = self._exit.enter_context(ExternalPostgres(self.external_dsn))
            else:
                self.postgres = self._exit.enter_context(
                    EmbeddedPostgres(self.run_dir / "postgres", keep_data=self.keep_data))
            self.nats = self._exit.enter_context(NatsServer(self.run_dir / "nats", keep_data=self.keep_data))
            if self.refserver_options is not None:
                self.refserver = self._exit.enter_context(RefServer(
                    self.run_dir / "refserver", self.dsn, self.nats_url, self.refserver_options))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self._exit.close()

    def managed(self) -> list[ManagedProcess]:
        """Return every process this stack started (a part may run several)."""
        found: list[ManagedProcess] = []
        for part in (self.postgres, self.nats, self.refserver):
            if (process := getattr(part, "process", None)) is not None:
                found.append(process)
            found.extend(getattr(part, "processes", []))
        return found

    def pids(self) -> dict[str, int]:
        """Return the pid of each running process this stack started, by name."""
        return {p.name: p.pid for p in self.managed() if p.alive()}

    def dead(self) -> str | None:
        """Return the name of a process of this stack that has died, if any."""
        return next((p.name for p in self.managed() if p.proc is not None and not p.alive()), None)

    def info(self) -> dict[str, Any]:
        """Return how to connect to the stack: no DSN password; the reference server's throw-away token."""
        assert self.postgres is not None and self.nats is not None
        info: dict[str, Any] = {
            "run_dir": str(self.run_dir),
            "postgres": {
                "dsn": self.dsn if not self.external_dsn else "(from CONTEND_DSN / --dsn)",
                "version": self.postgres.version,
                "embedded": self.external_dsn is None,
            },
            "nats": {
                "url": self.nats.url,
                "monitor_url": self.nats.monitor_url,
                "version": self.nats.version,
            },
            "pids": self.pids(),
        }
        if self.refserver is not None:
            info["refserver"] = self.refserver.info()
        return info

    def write_info(self, path: Path | None = None) -> Path:
        path = path or self.run_dir / "stack.json"
        path.write_text(json.dumps(self.info(), indent=2) + "\n")
        return path

