"""Start-up order in containers, kept by the processes themselves (not by the compose implementation).

podman-compose ignores ``depends_on`` conditions and may start every container at once, so
``setup`` waits for Postgres and NATS to answer (bounded), and web and workers wait for the file
setup writes to a shared volume once migrations and fixtures are done (bounded too). Each wait
ends with a one-line error naming what never came and for how long it was awaited.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

POLL_S = 0.5


class StartupError(RuntimeError):
    """A service this process needs did not come within its time."""


def wait_until(what: str, attempt: Callable[[], str | None], timeout_s: float) -> None:
    """Call ``attempt`` (None when it succeeded, else what went wrong) until it succeeds or
    ``timeout_s`` passes; raise StartupError with the last problem then."""
    deadline = time.monotonic() + timeout_s
    while True:
        problem = attempt()
        if problem is None:
            return
        if time.monotonic() >= deadline:
            raise StartupError(f"{what} did not come within {timeout_s:g} s (last: {problem})")
        time.sleep(POLL_S)


def postgres_answers(dsn: str) -> str | None:
    """Return None when a session can be opened on ``dsn`` and run a query, else the error."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def port_answers(url: str, default_port: int) -> str | None:
    """Return None when the host and port of ``url`` accept a TCP connection, else the error."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=3):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__


def file_written(path: Path) -> str | None:
    """Return None when ``path`` exists and is not empty, else why not."""
    return None if path.is_file() and path.stat().st_size else f"no {path} yet"


def wait_for_services(timeout_s: float) -> None:
    """Wait for Postgres (CONTEND_REF_DSN) and NATS (CONTEND_REF_NATS) to answer."""
    dsn = os.environ.get("CONTEND_REF_DSN", "postgresql://postgres@127.0.0.1:5432/contend")
    nats_url = os.environ.get("CONTEND_REF_NATS", "nats://127.0.0.1:4222")
    host = urlsplit(dsn).hostname
    wait_until(f"Postgres at {host}", lambda: postgres_answers(dsn), timeout_s)
    wait_until(f"NATS at {urlsplit(nats_url).netloc}", lambda: port_answers(nats_url, 4222), timeout_s)


def wait_for_setup(path: Path, timeout_s: float) -> None:
    """Wait until setup has written ``path`` (migrations and fixtures are done)."""
    wait_until(f"setup's {path} (migrations and fixtures)", lambda: file_written(path), timeout_s)


def write_setup(path: Path | None, made: dict[str, Any]) -> dict[str, Any]:
    """Return the fixtures record of a container setup and write it to ``path`` at once (web and
    workers start when it appears).

    ``base_url`` and ``dsn`` are where the host reaches the published ports
    (CONTEND_REF_PUBLIC_URL, CONTEND_REF_PUBLIC_DSN: no password), so a command target's
    ``fixtures`` can print this file as it is.
    """
    record = dict(made, token_env="CONTEND_REF_TOKEN")
    for key, name in (("base_url", "CONTEND_REF_PUBLIC_URL"), ("dsn", "CONTEND_REF_PUBLIC_DSN")):
        if os.environ.get(name):
            record[key] = os.environ[name]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n")  # a line: podman-compose exec appends its own
        tmp.replace(path)
    return record


def fail(error: StartupError) -> None:
    """Print the start-up error as one line and exit 1 (the container stops, its log says why)."""
    print(f"Error: {error}", file=sys.stderr)
    sys.exit(1)
