from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from django.apps import AppConfig
from django.conf import settings

WRITES = ("INSERT", "UPDATE", "DELETE")


def application_name() -> str:
    """Return the application_name of this thread's connection (format in docs/records.md)."""
    return (f"contend-ref:{settings.REF_ROLE} pid={os.getpid()} tid={threading.get_ident()} "
            f"ntid={threading.get_native_id()}")


def cachalot_active() -> bool:
    """Tell whether this process pays the modelled cachalot invalidation cost per write."""
    if settings.FLAGS["CACHALOT"] != "on":
        return False
    return not settings.REF_ROLE.startswith("worker") or settings.FLAGS["CACHALOT_RESULT_TASK"] == "on"


def _cachalot_invalidation(execute: Callable[..., Any], sql: str, params: Any, many: bool,
                           context: Any) -> Any:
    """Model django-cachalot: after a write to an app table, wait one invalidation round trip.

    The wait happens inside the caller's transaction, as the real invalidation does, so lock
    holders spend it ``idle in transaction``. The side tables standing in for Redis are exempt.
    """
    result = execute(sql, params, many, context)
    head = sql.lstrip()[:40].upper()
    if head.startswith(WRITES) and '"REF_' not in head and " REF_" not in head:
        time.sleep(int(settings.FLAGS["CACHALOT_INVALIDATION_MS"]) / 1000)
    return result


def _on_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    # Django opens connections lazily in the thread that uses them, so this runs in that thread.
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('application_name', %s, false)", [application_name()])
    if cachalot_active() and _cachalot_invalidation not in connection.execute_wrappers:
        connection.execute_wrappers.append(_cachalot_invalidation)


class RefServerConfig(AppConfig):
    name = "contend.refserver"
    label = "antenna"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        connection_created.connect(_on_connection, dispatch_uid="contend-ref-connection")
