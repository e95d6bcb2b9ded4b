"""The reference server's flags: their allowed values, defaults, meanings, and the presets of PR #1261.

Flags reach the reference server's processes as environment variables of the same name; the server
reads them once at start. The defaults are the state after PR #1261 (Antenna's current behaviour).
This module imports no django: the CLI, scenarios and reports read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from contend.errors import ConfigError

__all__ = ["FLAGS", "PRESETS", "Flag", "flag_names", "parse_overrides", "resolve_flags"]


@dataclass(frozen=True)
class Flag:
    """One flag: either a choice among ``choices``, or an integer not below ``minimum``."""

    name: str
    default: str
    meaning: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None

    @property
    def allowed(self) -> str:
        """Return the allowed values, as shown to users."""
        return "|".join(self.choices) if self.choices else f"integer >= {self.minimum}"

    def check(self, value: str) -> str:
        """Return ``value`` normalised, or raise ConfigError naming the allowed values."""
        text = value.strip()
        if self.choices:
            if text.lower() in self.choices:
                return text.lower()
        else:
            try:
                number = int(text)
            except ValueError:
                number = None
            if number is not None and (self.minimum is None or number >= self.minimum):
                return str(number)
        raise ConfigError(
            f"flag {self.name}: {value!r} is not allowed (allowed: {self.allowed})",
            hint="run `contend flags` to list every flag and its values",
        )


FLAGS: tuple[Flag, ...] = (
    Flag("JOB_LOG_PERSIST_ENABLED", "true",
         "persist job log lines to the database (false: process stdout only; PR #1261's switch)",
         choices=("true", "false")),
    Flag("JOB_LOG_STORE", "json",
         "where a job log line goes: json = SELECT then UPDATE of jobs_job.logs (before PR #1259), "
         "table = one INSERT into jobs_joblog (PR #1259)",
         choices=("json", "table")),
    Flag("PROGRESS_LOCK", "none",
         "progress update of a result task: select_for_update (before PR #1261), none (plain read, "
         "narrowed save; PR #1261), guarded (Antenna's current main: plain read, the terminal status "
         "as one UPDATE ... WHERE status IN (<finalizable>), then a save of progress and updated_at), "
         "none_full_save (plain read, full-row save), optimistic (compare-and-retry), atomic (one "
         "UPDATE with jsonb arithmetic, issue #1256 option D)",
         choices=("select_for_update", "none", "guarded", "none_full_save", "optimistic", "atomic")),
    Flag("NATS_TASK_TTR", "300", "ack_wait of each job's task consumer, seconds (30 before PR #1261)",
         minimum=1),
    Flag("NATS_MAX_DELIVER", "2", "deliveries of a task before NATS gives up on it", minimum=1),
    Flag("NATS_CONNECT_ATTEMPTS", "60",
         "attempts of a request's NATS connection, 2 s apart, before it answers 503 (nats-py's "
         "default, which Antenna keeps: about 2 minutes when NATS is down)",
         minimum=1),
    Flag("JOBS_POLL_ORDER", "random",
         "order of GET /api/v2/jobs/?ids_only=1: newest (-created_at, before PR #1261), oldest, random",
         choices=("newest", "oldest", "random")),
    Flag("JOBS_POLL_DEFAULT_LIMIT", "1",
         "page size of an ids_only job list without ?limit= (10 before PR #1261)", minimum=1),
    Flag("ATOMIC_REQUESTS", "true", "run each HTTP request in one database transaction",
         choices=("true", "false")),
    Flag("WEB_CONCURRENCY", "1", "web processes (each serves every request on its own thread)",
         minimum=1),
    Flag("ML_WORKER_CONCURRENCY", "8", "result worker processes on the ml_results queue", minimum=0),
    Flag("DB_STATEMENT_TIMEOUT_MS", "30000",
         "statement_timeout of every web and worker database connection, milliseconds (Antenna's "
         "local settings: 30 s; 0 = none, as its production); a lock wait counts toward it",
         minimum=0),
    Flag("JOB_INITIAL_LOG_LINES", "0",
         "log lines each fixture job already carries, as a long-running job does (capped at 1000, "
         "the json store's limit): json = logs.stdout filled, newest first; table = jobs_joblog rows",
         minimum=0),
    Flag("CACHALOT", "on",
         "modelled django-cachalot 2.6 (no shared cache runs here): a cacheable SELECT pays "
         "CACHALOT_READ_MS before it and again after it (modelled as a miss: lookup, then store); a "
         "write pays CACHALOT_INVALIDATION_MS once after COMMIT when inside an atomic block, before "
         "the statement in autocommit",
         choices=("on", "off")),
    Flag("CACHALOT_RESULT_TASK", "off",
         "off = the result task runs in cachalot_disabled() (PR #1261), which turns off the read "
         "side only: its writes still pay invalidations",
         choices=("on", "off")),
    Flag("CACHALOT_INVALIDATION_MS", "1",
         "modelled cost of one cachalot invalidation, milliseconds: one cache set_many round trip "
         "(a Redis call on a local network)",
         minimum=0),
    Flag("CACHALOT_READ_MS", "1",
         "modelled cost of one cachalot cache round trip on a cacheable read, milliseconds (a Redis "
         "GET or SET on a local network)",
         minimum=0),
    Flag("APPLICATION_NAME", "on",
         "on = every database connection names its process and thread in application_name "
         "(contend's format); off = it names nothing, as an application that does not cooperate: "
         "contend maps its backends to threads by socket and elimination",
         choices=("on", "off")),
)

_BY_NAME = {flag.name: flag for flag in FLAGS}

_PR_1261 = {
    "JOB_LOG_PERSIST_ENABLED": "true", "JOB_LOG_STORE": "json", "PROGRESS_LOCK": "none",
    "NATS_TASK_TTR": "300", "JOBS_POLL_ORDER": "random", "JOBS_POLL_DEFAULT_LIMIT": "1",
    "CACHALOT_RESULT_TASK": "off", "JOB_INITIAL_LOG_LINES": "1000",
}

PRESETS: dict[str, tuple[str, dict[str, str]]] = {
    "pre-1261": ("Antenna just before PR #1261: FOR UPDATE progress, log lines rewrite jobs_job.logs, "
                 "30 s ack_wait, same newest-first job page for every poller",
                 {**_PR_1261, "PROGRESS_LOCK": "select_for_update", "NATS_TASK_TTR": "30",
                  "JOBS_POLL_ORDER": "newest", "JOBS_POLL_DEFAULT_LIMIT": "10",
                  "CACHALOT_RESULT_TASK": "on"}),
    "pr-1261": ("PR #1261 merged: plain read and narrowed save, 300 s ack_wait, random job, limit 1",
                dict(_PR_1261)),
    "pr-1261-logs-off": ("PR #1261 with JOB_LOG_PERSIST_ENABLED=false (log lines go to stdout only)",
                         {**_PR_1261, "JOB_LOG_PERSIST_ENABLED": "false"}),
    "joblog-1259": ("PR #1259: log lines are INSERTs into jobs_joblog, the parent row is not rewritten",
                    {**_PR_1261, "JOB_LOG_STORE": "table"}),
    "head": ("Antenna's current main: log lines in jobs_joblog, guarded terminal-status UPDATE, 300 s "
             "ack_wait, random job, limit 1",
             {**_PR_1261, "JOB_LOG_STORE": "table", "PROGRESS_LOCK": "guarded"}),
}


def flag_names() -> list[str]:
    return [flag.name for flag in FLAGS]


def resolve_flags(preset: str | None, overrides: Mapping[str, str]) -> dict[str, str]:
    """Return every flag's value: defaults, then the preset, then ``overrides`` (checked)."""
    values = {flag.name: flag.default for flag in FLAGS}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(
                f"unknown preset {preset!r} (allowed: {', '.join(PRESETS)})",
                hint="run `contend flags` to list the presets",
            )
        values.update(PRESETS[preset][1])
    for name, value in overrides.items():
        flag = _BY_NAME.get(name.strip().upper())
        if flag is None:
            raise ConfigError(
                f"unknown flag {name!r} (allowed: {', '.join(_BY_NAME)})",
                hint="run `contend flags` to list every flag and its values",
            )
        values[flag.name] = flag.check(str(value))
    return values


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """Return ``{"NAME": "value"}`` from ``NAME=value`` strings (as given to ``--flag``)."""
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--flag {pair!r} is not NAME=VALUE",
                              hint="for example --flag PROGRESS_LOCK=atomic")
        overrides[name.strip().upper()] = value
    return overrides
