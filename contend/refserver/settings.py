"""Django settings of the reference server, read from the environment once at process start.

``CONTEND_REF_DSN`` names the database, ``CONTEND_REF_NATS`` the NATS server; the flags of
contend/flags.py arrive as environment variables of their own names.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from contend.flags import flag_names, resolve_flags

FLAGS = resolve_flags(None, {name: os.environ[name] for name in flag_names() if name in os.environ})

REF_ROLE = os.environ.get("CONTEND_REF_ROLE", "web")
_dsn = urlsplit(os.environ.get("CONTEND_REF_DSN", "postgresql://postgres@127.0.0.1:5432/contend"))

SECRET_KEY = "contend-reference-server-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = False  # as Antenna: naive local times
TIME_ZONE = os.environ.get("TZ", "UTC")
INSTALLED_APPS = ["contend.refserver.apps.RefServerConfig"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "contend.refserver.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _dsn.path.lstrip("/") or "contend",
        "USER": _dsn.username or "postgres",
        "PASSWORD": _dsn.password or "",
        "HOST": _dsn.hostname or "127.0.0.1",
        "PORT": str(_dsn.port or 5432),
        "ATOMIC_REQUESTS": FLAGS["ATOMIC_REQUESTS"] == "true",
        "CONN_MAX_AGE": 0,
        # Antenna's local settings pass the same libpq option; a lock wait counts toward it.
        "OPTIONS": ({"options": f"-c statement_timeout={FLAGS['DB_STATEMENT_TIMEOUT_MS']}"}
                    if int(FLAGS["DB_STATEMENT_TIMEOUT_MS"]) else {}),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATA_UPLOAD_MAX_MEMORY_SIZE = 100 * 1024 * 1024
APPEND_SLASH = False
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stdout"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {"django.server": {"level": "WARNING"}},
}
