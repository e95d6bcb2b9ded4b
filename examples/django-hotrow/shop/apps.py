import os
import threading
from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created


def name_the_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Name each Postgres session after the process and thread that opened it, in contend's format,
    so a lock holder is traced to its thread's stack (docs/external-target.md, section 5)."""
    name = (f"contend-ref:web pid={os.getpid()} tid={threading.get_ident()} "
            f"ntid={threading.get_native_id()}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('application_name', %s, false)", [name])


class ShopConfig(AppConfig):
    name = "shop"

    def ready(self) -> None:
        connection_created.connect(name_the_connection)
