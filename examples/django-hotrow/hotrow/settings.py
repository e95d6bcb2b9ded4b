"""Settings of the hot-row shop: a Django app of its own, on the Postgres named by HOTROW_DSN."""

import os
from urllib.parse import urlsplit

_dsn = urlsplit(os.environ.get("HOTROW_DSN", "postgresql://postgres@127.0.0.1:5432/contend"))

SECRET_KEY = "hotrow-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["shop"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "hotrow.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _dsn.path.lstrip("/"),
        "USER": _dsn.username or "postgres",
        "PASSWORD": os.environ.get("HOTROW_DB_PASSWORD", ""),
        "HOST": _dsn.hostname,
        "PORT": _dsn.port,
    }
}
# Which view /buy/ runs: "locked" (select_for_update on the product row) or "free" (no row lock).
BUY_VIEW = os.environ.get("HOTROW_BUY_VIEW", "locked")
# Seconds a purchase spends on its "payment call" between reading the product and writing the order.
PAYMENT_S = float(os.environ.get("HOTROW_PAYMENT_S", "0.2"))
