"""Postgres for a run: an embedded server in the run folder, or an external one given by a DSN."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from contend.errors import ConfigError, StackError
from contend.redact import redact_message
from contend.stack.process import Lifecycle, ManagedProcess, free_port

# Postgres refuses to run as root; when contend runs as root it runs Postgres as this user.
UNPRIVILEGED_USER = "nobody"

# Settings of the embedded server, chosen for diagnosis (see docs/metrics.md).
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "max_connections": "300",
    "track_activity_query_size": "16384",
    "compute_query_id": "on",
    "shared_buffers": "128MB",
    # The server's own account of a run (contend/pglog.py parses it): every lock wait longer than
    # deadlock_timeout (1 s, the default) when it starts and when it ends, and every ERROR/FATAL,
    # each line with a UTC millisecond timestamp, the backend pid and its application_name.
    "log_lock_waits": "on",
    "log_min_messages": "warning",
    "log_min_duration_statement": "-1",
    "log_line_prefix": "%m [%p] [%a] ",
    # No STATEMENT line after each of them: a job-log UPDATE carries ~150 kB of text, so a run with a
    # few hundred logged waits would write tens of MB (the samplers keep each query's first 500 chars).
    "log_min_error_statement": "panic",
    "log_timezone": "UTC",
}


def bindir_candidates() -> list[Path]:
    """Return folders holding ``postgres`` and ``initdb``, best first."""
    found: list[Path] = []
    if env := os.environ.get("CONTEND_PG_BINDIR"):
        found.append(Path(env))
    # pgserver's own import has side effects; only its bundled binaries are wanted here.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        found += [Path(p, "pginstall", "bin") for p in spec.submodule_search_locations]
    found += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    return [p for p in found if (p / "postgres").exists() and (p / "initdb").exists()]


def _run_as() -> str | None:
    return UNPRIVILEGED_USER if os.geteuid() == 0 else None


def _usable_by(user: str | None, bindir: Path, folder: Path) -> bool:
    """Tell whether ``user`` can run the binaries of ``bindir`` and enter ``folder``."""
    if user is None:
        return True
    check = f'test -x "{bindir}/postgres" && test -x "{folder}"'
    return subprocess.run(["sh", "-c", check], user=user, check=False).returncode == 0


def _has_pg_stat_statements(bindir: Path) -> bool:
    out = subprocess.run(
        [str(bindir / "pg_config"), "--pkglibdir"], capture_output=True, text=True, check=False
    )
    return out.returncode == 0 and Path(out.stdout.strip(), "pg_stat_statements.so").exists()


class EmbeddedPostgres(Lifecycle):
    """A throw-away Postgres server on a free loopback port, its data inside ``folder``."""

    database = "contend"

    def __init__(self, folder: Path, ready_timeout: float = 60.0, keep_data: bool = False) -> None:
        self.folder = folder
        self.ready_timeout = ready_timeout
        self.keep_data = keep_data
        """Keep the data directory after stop (else only the server log stays in ``folder``)."""
        self._pgdata: Path | None = None
        self.port = 0
        self.version = ""
        self.process: ManagedProcess | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def admin_dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _choose(self) -> tuple[Path, Path]:
        """Return (bindir, data folder) that the server user can use."""
        user = _run_as()
        self.folder.mkdir(parents=True, exist_ok=True)
        candidates = bindir_candidates()
        if not candidates:
            raise StackError(
                "no Postgres server binaries found",
                hint="pip install pgserver, install postgresql, or set CONTEND_PG_BINDIR",
            )
        for bindir in candidates:
            if _usable_by(user, bindir, self.folder):
                return bindir, self.folder / "pgdata"
        for bindir in candidates:
            # Running as root inside a folder the server user cannot enter: keep the data in a
            # private temporary folder instead, and say where in the run folder.
            self._tmp = tempfile.TemporaryDirectory(prefix="contend-pg-")
            tmp = Path(self._tmp.name)
            os.chmod(tmp, 0o755)
            if _usable_by(user, bindir, tmp):
                (self.folder / "pgdata.location").write_text(f"{tmp}/pgdata\n")
                return bindir, tmp / "pgdata"
            self._tmp.cleanup()
        raise StackError(
            f"user {user!r} cannot run any Postgres binaries found ({', '.join(map(str, candidates))})",
            hint="set CONTEND_PG_BINDIR to a server installation that user can read",
        )

    def start(self) -> None:
        bindir, pgdata = self._choose()
        self._pgdata = pgdata
        user = _run_as()
        pgdata.mkdir(mode=0o700, exist_ok=True)
        if user:
            shutil.chown(pgdata, user)
        log = self.folder / "postgres.log"
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, user=user, check=False,
        )
        if init.returncode != 0:
            raise StackError("initdb failed", hint=(init.stderr or init.stdout).strip()[-2000:])
        settings = dict(SERVER_SETTINGS)
        if _has_pg_stat_statements(bindir):
            settings["shared_preload_libraries"] = "pg_stat_statements"
        self.port = free_port()
        settings["port"] = str(self.port)
        argv = [str(bindir / "postgres"), "-D", str(pgdata)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self.process = ManagedProcess(
            "postgres", argv, log, ready=self._ready, ready_timeout=self.ready_timeout,
            user=user, stop_signal=2,  # SIGINT: Postgres' "fast" shutdown
        )
        self.process.start()
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
            self.version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            if "shared_preload_libraries" in settings:
                with psycopg.connect(self.dsn, autocommit=True) as db:
                    db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def _ready(self) -> bool:
        with psycopg.connect(self.admin_dsn(), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        stopped = self.process is None or not self.process.alive()
        if not self.keep_data and self._pgdata is not None and stopped:
            # A run folder keeps what a reader needs; the data directory (150 MB) is not among it.
            shutil.rmtree(self._pgdata, ignore_errors=True)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None



class ExternalPostgres:
    """A server the user runs, reached through a DSN; contend only connects to it."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.version = ""

    def __enter__(self) -> ExternalPostgres:
        try:
            with psycopg.connect(self.dsn, connect_timeout=10) as conn:
                self.version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot connect to the Postgres of CONTEND_DSN / --dsn: {redact_message(exc)}",
                hint="check host, port, database and the password in the DSN (kept in the environment)",
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        pass
