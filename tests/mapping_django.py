"""A threaded Django server that names nothing: ``python mapping_django.py PORT``.

Every request runs in one transaction (ATOMIC_REQUESTS). ``POST /save/<row>/`` updates its row of
``wg_rows``, then logs a line; the job log handler's ``emit()`` updates row 1 inside the request's
transaction, holding the handler's lock, as Antenna's job logger does. While something else holds
row 1, the first request to log waits on Postgres with the lock held, and every later one queues
on that lock with its transaction open: a convoy behind a ``logging.Handler`` lock. The DSN comes
from ``SAMPLE_DSN``; no connection sets application_name.
"""

from __future__ import annotations

import logging
import os
import sys
from urllib.parse import urlsplit

import django
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import path

_dsn = urlsplit(os.environ["SAMPLE_DSN"])
settings.configure(
    DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, MIDDLEWARE=[], SECRET_KEY="not-secret",
    DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql", "NAME": _dsn.path.lstrip("/"),
        "USER": _dsn.username or "postgres", "HOST": _dsn.hostname, "PORT": str(_dsn.port),
        "ATOMIC_REQUESTS": True, "CONN_MAX_AGE": 0,
    }},
)
django.setup()


class JobLogHandler(logging.Handler):
    """Writes each log line to the job row inside the caller's transaction."""

    def emit(self, record: logging.LogRecord) -> None:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE wg_rows SET n = n + 1 WHERE id = 1")


log = logging.getLogger("mapping.jobs")
log.propagate = False
log.addHandler(JobLogHandler())
log.setLevel(logging.INFO)


def save(request: HttpRequest, row: int) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("UPDATE wg_rows SET n = n + 1 WHERE id = %s", [row])
    log.info("saved row %s", row)
    return HttpResponse("ok")


def ping(request: HttpRequest) -> HttpResponse:
    return HttpResponse("pong")


urlpatterns = [path("save/<int:row>/", save), path("ping/", ping)]

if __name__ == "__main__":
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import run

    run("127.0.0.1", int(sys.argv[1]), WSGIHandler(), threading=True)
