"""Entry points of the reference server's processes (started by contend.stack.refserver).

    python -m contend.refserver web --port P [--host H] [--ready FILE]
                                [--setup FIXTURES_JSON --jobs K --images N]
    python -m contend.refserver worker --index N [--ready FILE]
    python -m contend.refserver images --port P [--host H] [--ready FILE]
    python -m contend.refserver setup --out FILE [--jobs K --images N --wait-s S]   (containers)
    python -m contend.refserver manage <django-admin arguments>

In containers, web and worker take ``--after FILE``: they wait (``--wait-s``) for the file that
``setup`` writes once migrations and fixtures are done (contend/refserver/startup.py).

Configuration comes from the environment (CONTEND_REF_DSN, CONTEND_REF_NATS, the flags; the API
token of --setup from CONTEND_REF_TOKEN, the images' public base URL from CONTEND_REF_IMAGES_URL).
SIGTERM keeps its default action: the process ends at once and Postgres rolls back whatever it had
open.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any


def _django(role: str) -> None:
    os.environ["CONTEND_REF_ROLE"] = role
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "contend.refserver.settings")
    import django

    django.setup()


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _fork(processes: int) -> int:
    """In containers (no stack to start them): fork ``processes`` copies; return this copy's index.

    The parent only waits for its children and passes SIGTERM on; it never returns.
    """
    if processes <= 1:
        return 0
    children = []
    for index in range(processes):
        pid = os.fork()
        if pid == 0:
            return index
        children.append(pid)

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    for child in children:
        os.waitpid(child, 0)
    sys.exit(0)


def _after_setup(args: argparse.Namespace) -> None:
    if args.after is None:
        return
    from contend.refserver import startup

    try:
        startup.wait_for_setup(args.after, args.wait_s)
    except startup.StartupError as error:
        startup.fail(error)


def web(args: argparse.Namespace) -> None:
    _after_setup(args)
    _django("web")
    from django.core.management import call_command
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application
    from django.db import connections

    if args.setup:
        from contend.refserver.fixtures import create_fixtures

        call_command("migrate", verbosity=0)
        made = create_fixtures(args.jobs, args.images, token=os.environ.pop("CONTEND_REF_TOKEN", None))
        _write_json(Path(args.setup), {"project_id": made.project_id, "pipeline_slug": made.pipeline_slug,
                                       "job_ids": made.job_ids})
        connections.close_all()  # no idle setup connection left behind (its statistics flush now)

    class Handler(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

    class Server(ThreadedWSGIServer):
        # Every web process binds the same port; the kernel spreads connections over them.
        allow_reuse_port = True
        request_queue_size = 1024

    _fork(args.processes)
    server = Server((args.host, args.port), Handler)
    server.set_app(get_wsgi_application())
    _write_json(args.ready, {"pid": os.getpid()})
    server.serve_forever()


def worker(args: argparse.Namespace) -> None:
    _after_setup(args)
    _django(f"worker-{args.index + _fork(args.processes)}")
    import nats
    from django.conf import settings
    from django.db import close_old_connections

    from contend.refserver import queues
    from contend.refserver.apps import cachalot_disabled
    from contend.refserver.tasks import process_result

    loop = asyncio.new_event_loop()

    async def subscribe() -> Any:
        nc = await nats.connect(queues.nats_url(), connect_timeout=5)
        js = nc.jetstream()
        await queues.ensure_results_queue(js)
        return await js.pull_subscribe(queues.ML_RESULTS, queues.ML_RESULTS_CONSUMER,
                                       stream=queues.ML_RESULTS)

    psub = loop.run_until_complete(subscribe())
    _write_json(args.ready, {"pid": os.getpid()})
    while True:
        try:
            # Prefetch 1: take the next message only when the previous task is done.
            messages = loop.run_until_complete(psub.fetch(1, timeout=5))
        except nats.errors.TimeoutError:
            continue
        for msg in messages:
            loop.run_until_complete(msg.ack())  # Celery without acks_late acks on receipt
            task = queues.decode_result_message(msg.data)
            if settings.FLAGS["CACHALOT_RESULT_TASK"] == "on":
                process_result(task["job_id"], task["result_data"], task["reply_subject"])
            else:
                with cachalot_disabled():  # PR #1261: the read side of cachalot is off in this task
                    process_result(task["job_id"], task["result_data"], task["reply_subject"])
            close_old_connections()  # what Celery's Django fix-up does after each task


def serve_images(args: argparse.Namespace) -> None:
    import time

    from contend.refserver.images import ImageServer, pool

    server = ImageServer((args.host, args.port), pool(), time.time())
    _write_json(args.ready, {"pid": os.getpid()})
    server.serve_forever()


def setup(args: argparse.Namespace) -> None:
    """Containers: wait for Postgres and NATS, migrate, create the fixtures; print their JSON and
    write it to ``--out`` (the file web and workers wait for)."""
    from contend.refserver import startup

    args.out.unlink(missing_ok=True)  # a file of an earlier start must not let web and workers in
    if not os.environ.get("CONTEND_REF_TOKEN"):
        startup.fail(startup.StartupError("no CONTEND_REF_TOKEN: export a throw-away 40-hex key before up"))
    try:
        startup.wait_for_services(args.wait_s)
    except startup.StartupError as error:
        startup.fail(error)
    _django("setup")
    from django.core.management import call_command
    from django.db import connections

    from contend.refserver.fixtures import create_fixtures

    call_command("migrate", verbosity=0)
    made = create_fixtures(args.jobs, args.images, token=os.environ.get("CONTEND_REF_TOKEN"))
    connections.close_all()
    record = startup.write_setup(args.out, {"project_id": made.project_id,
                                            "pipeline_slug": made.pipeline_slug, "job_ids": made.job_ids})
    print(json.dumps(record), flush=True)


def manage(argv: list[str]) -> None:
    _django("manage")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["contend-refserver", *argv])


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the web and worker entry points (``manage`` passes through to Django)."""
    parser = argparse.ArgumentParser(prog="python -m contend.refserver")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("web")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--ready", type=Path)
    w.add_argument("--setup")
    w.add_argument("--jobs", type=int, default=1)
    w.add_argument("--images", type=int, default=100)
    w.add_argument("--processes", type=int, default=1, help="fork this many web processes (containers)")
    k = sub.add_parser("worker")
    k.add_argument("--index", type=int, required=True)
    k.add_argument("--ready", type=Path)
    k.add_argument("--processes", type=int, default=1, help="fork this many workers (containers)")
    i = sub.add_parser("images", help="the object storage the tasks' image_url name")
    i.add_argument("--port", type=int, required=True)
    i.add_argument("--host", default="127.0.0.1")
    i.add_argument("--ready", type=Path)
    s = sub.add_parser("setup", help="containers: wait for Postgres and NATS, migrate, create fixtures")
    s.add_argument("--out", type=Path, required=True, help="the fixtures JSON web and workers wait for")
    s.add_argument("--jobs", type=int, default=1)
    s.add_argument("--images", type=int, default=100)
    s.add_argument("--wait-s", type=float, default=120.0, help="seconds to wait for Postgres and NATS")
    for p in (w, k):
        p.add_argument("--after", type=Path, help="containers: start once setup has written this file")
        # longer than setup's own wait, which comes first, and then its migrations
        p.add_argument("--wait-s", type=float, default=300.0, help="seconds to wait for --after's file")
    sub.add_parser("manage", help="django-admin commands: migrate, contend_fixtures, ...")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["manage"]:
        manage(argv[1:])
        return
    args = build_parser().parse_args(argv)
    {"web": web, "worker": worker, "images": serve_images, "setup": setup}[args.command](args)


if __name__ == "__main__":
    main()
