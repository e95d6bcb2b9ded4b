"""Start the hot-row shop for one variant: ``python serve.py TARGET_DIR`` (the command target's ``up``).

Its Postgres comes from ``contend up --no-refserver`` (a fresh server for the variant; in your own
stack that would be your database), then the shop migrates, creates its products and serves
Django's threaded WSGI server on a free loopback port. Once it serves, it writes
``TARGET_DIR/server.json`` in the format of a command target's fixtures: ``base_url``, ``job_ids``
(here the hot product's id, which the locustfile reads from CONTEND_JOB_IDS), ``dsn`` without a
password and ``pyspy_pids``. It runs in the foreground until contend stops its process group.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start_postgres(target_dir: Path) -> str:
    """Start a throw-away Postgres in the background; return its DSN (no password)."""
    info = target_dir / "postgres.json"
    info.unlink(missing_ok=True)
    log = open(target_dir / "postgres.log", "ab")  # noqa: SIM115  open while the server runs
    subprocess.Popen([sys.executable, "-m", "contend", "up", "--no-refserver", "--json", str(info),
                      "--reports", str(target_dir)], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 180
    while not (info.exists() and info.stat().st_size):
        if time.monotonic() > deadline:
            sys.exit("Postgres did not come up; see postgres.log")
        time.sleep(0.2)
    return str(json.loads(info.read_text())["dsn"])


def main() -> None:
    target_dir = Path(sys.argv[1])
    dsn = start_postgres(target_dir)
    os.environ["HOTROW_DSN"] = dsn
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hotrow.settings")
    sys.path.insert(0, str(HERE))
    import django

    django.setup()
    from django.core.management import call_command
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application
    from django.db import connections
    from shop.models import Customer, Product

    call_command("migrate", verbosity=0)
    hot = Product.objects.create(name="the popular one", stock=1_000_000)
    Product.objects.bulk_create(Product(name=f"product {n}", stock=100) for n in range(10))
    Customer.objects.bulk_create(Customer(name=f"customer {n}") for n in range(10))
    connections.close_all()

    server = ThreadedWSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
    server.set_app(get_wsgi_application())
    host, port = server.server_address[:2]
    fixtures = {"base_url": f"http://{host}:{port}", "job_ids": [hot.pk], "dsn": dsn,
                "pyspy_pids": {"web": [os.getpid()]}}
    tmp = target_dir / "server.json.tmp"
    tmp.write_text(json.dumps(fixtures))
    tmp.replace(target_dir / "server.json")
    view = os.environ.get("HOTROW_BUY_VIEW", "locked")
    print(f"serving on {fixtures['base_url']}, view {view}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
