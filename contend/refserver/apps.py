from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.db import transaction

WRITES = ("INSERT", "UPDATE", "DELETE")
_local = threading.local()


def application_name() -> str:
    """Return the application_name of this thread's connection (format in docs/records.md)."""
    return (f"contend-ref:{settings.REF_ROLE} pid={os.getpid()} tid={threading.get_ident()} "
            f"ntid={threading.get_native_id()}")


@contextlib.contextmanager
def cachalot_disabled() -> Iterator[None]:
    """Like django-cachalot's ``cachalot_disabled()``: this thread's reads skip the cache, writes still
    invalidate."""
    before = getattr(_local, "cachalot_disabled", False)
    _local.cachalot_disabled = True
    try:
        yield
    finally:
        _local.cachalot_disabled = before


def _pay_invalidation() -> None:
    time.sleep(int(settings.FLAGS["CACHALOT_INVALIDATION_MS"]) / 1000)


def _cachalot(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
    """Model where django-cachalot 2.6 spends time around one statement (no cache runs here).

    A write to an app table invalidates that table's cached queries: inside an atomic block
    cachalot buffers the invalidation and sends it once the outermost block has committed (nothing
    on a rollback); in autocommit it sends it before the statement. A cacheable read (an app table,
    not FOR UPDATE, not ORDER BY RANDOM()) looks the query up first and, on a miss, stores the
    result after it; every read is modelled as a miss because the hot tables are invalidated by
    every write. The side tables standing in for Redis are not app tables.
    """
    head = sql.lstrip()[:10].upper()
    side_table = '"ref_' in sql or " ref_" in sql
    if head.startswith(WRITES) and not side_table:
        connection = context["connection"]
        if not connection.in_atomic_block:
            _pay_invalidation()
        elif not any(func is _pay_invalidation for _, func, _ in connection.run_on_commit):
            transaction.on_commit(_pay_invalidation, using=connection.alias)
        return execute(sql, params, many, context)
    disabled = getattr(_local, "cachalot_disabled", False)
    cacheable = (head.startswith("SELECT") and not side_table and not disabled
                 and "FOR UPDATE" not in sql and "RANDOM()" not in sql)
    if not cacheable:
        return execute(sql, params, many, context)
    read_s = int(settings.FLAGS["CACHALOT_READ_MS"]) / 1000
    time.sleep(read_s)
    result = execute(sql, params, many, context)
    time.sleep(read_s)
    return result


def _on_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    # Django opens connections lazily in the thread that uses them, so this runs in that thread.
    if settings.FLAGS["APPLICATION_NAME"] == "on":
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('application_name', %s, false)", [application_name()])
    if settings.FLAGS["CACHALOT"] == "on" and _cachalot not in connection.execute_wrappers:
        connection.execute_wrappers.append(_cachalot)


class RefServerConfig(AppConfig):
    name = "contend.refserver"
    label = "antenna"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        connection_created.connect(_on_connection, dispatch_uid="contend-ref-connection")
