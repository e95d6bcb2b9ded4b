"""The reference server's Django app loaded in the test process, against a database of the shared stack.

Threads of the test process then share one ``JobLogHandler`` per job, and so its lock, as the request
threads of one web process do. Django can be set up once per process: the first caller's flags win,
later callers get the same app (``inprocess_refserver`` returns it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg

from contend.stack import Stack

STATEMENT_TIMEOUT_MS = 2000  # short, so that the tests which wait for it stay short
DATABASE = "refserver_inprocess"


@dataclass(frozen=True)
class InProcessRefServer:
    dsn: str  # the app's database, for observer connections of the tests
    job_id: int
    statement_timeout_s: float


_app: InProcessRefServer | None = None


def inprocess_refserver(stack: Stack) -> InProcessRefServer:
    """Set Django up in this process (once) with one fixture job of 4 images; return where it is."""
    global _app
    if _app is not None:
        return _app
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    dsn = stack.dsn.rsplit("/", 1)[0] + f"/{DATABASE}"
    env = {"CONTEND_REF_DSN": dsn, "CONTEND_REF_NATS": stack.nats_url, "CONTEND_REF_ROLE": "web",
           "DJANGO_SETTINGS_MODULE": "contend.refserver.settings",
           "DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS), "JOB_LOG_STORE": "json",
           "JOB_LOG_PERSIST_ENABLED": "true", "ATOMIC_REQUESTS": "true", "CACHALOT": "off"}
    # The flags are read once by the settings module; the addresses are read again at each use.
    saved = {name: os.environ.get(name) for name in env if not name.startswith("CONTEND_REF_")}
    os.environ.update(env)
    try:
        import django

        django.setup()  # the settings module reads the environment now, once
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    from django.core.management import call_command
    from django.db import connections

    from contend.refserver.fixtures import create_fixtures

    call_command("migrate", verbosity=0)
    made = create_fixtures(1, 4)
    connections.close_all()
    _app = InProcessRefServer(dsn, made.job_ids[0], STATEMENT_TIMEOUT_MS / 1000)
    return _app
