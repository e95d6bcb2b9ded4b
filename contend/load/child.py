"""The load process: contend's workloads as locust users, run standalone, as a master or as a worker.

Run it only as ``python -m contend.load.child`` (the launcher does): importing locust monkey-patches
the interpreter with gevent, which must never happen in contend's own process.

Roles, and what travels over locust's messaging between them (the token never does):

- the *hub* (in the master, or in the standalone process) sends the plan to each node, releases
  the waves of batched POSTs (a wave starts when every user finished the previous one, across all
  workers), writes every node's records to ``load/requests-<node>.jsonl`` and ``load/progress.json``;
- a *node* (each worker, or the standalone process) runs the users and ships its records to the hub
  every ``SHIP_EVERY_S`` (``contend.load.users``: the node and what each user does).
"""

from __future__ import annotations

import locust  # first: gevent's monkey-patching must precede the other imports

# isort: split
import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from locust import User
from locust.env import Environment

from contend.errors import ChildExit, ConfigError
from contend.jsonl import JsonlWriter
from contend.load import locustfile, users
from contend.load.config import Locustfile
from contend.load.plan import TOKEN_ENV, Plan
from contend.load.records import FLUSH_EVERY_S
from contend.load.users import SHIP_EVERY_S, SLOTS, Node, Send, users_of
from contend.stats import quantile
from contend.target import check_target, is_loopback_host

FINISH_TIMEOUT_S = 20.0

log = logging.getLogger("contend.load")


# --- the hub: master or standalone ------------------------------------------------------------------


class Hub:
    """Releases waves, counts finished users and writes what the nodes ship."""

    def __init__(self, plan: Plan, load_dir: Path, broadcast: Send, nodes: int) -> None:
        self.plan = plan
        self.load_dir = load_dir
        self.broadcast = broadcast
        self.nodes = nodes
        self.users = [users_of(p, plan.workers) for p in plan.workloads]
        self.wave_counts: dict[tuple[int, int], int] = {}
        self.users_done = [0] * len(plan.workloads)
        self.hellos: set[str] = set()
        self.finals: set[str] = set()
        self.files: dict[str, JsonlWriter] = {}
        self.in_flight: dict[str, int] = {}
        self.durations: list[float] = []
        self.ok = self.failed = self.results = self.iterations = 0
        self.started_at: float | None = None
        self.halted = False

    def handle(self, kind: str, data: dict[str, Any], node_id: str = "local") -> None:
        if kind == "hello":
            self.hellos.add(node_id)
        elif kind == "records":
            self._on_records(data)
        elif kind == "wave_done":
            key = (data["slot"], data["wave"])
            self.wave_counts[key] = self.wave_counts.get(key, 0) + 1
            if self.wave_counts[key] == self.users[data["slot"]]:
                self.broadcast("wave_go", {"slot": data["slot"], "wave": data["wave"] + 1})
        elif kind == "user_done":
            self.users_done[data["slot"]] += 1

    def _on_records(self, data: dict[str, Any]) -> None:
        worker = data["worker"]
        if worker not in self.files:
            self.files[worker] = JsonlWriter(self.load_dir / f"requests-{worker}.jsonl", FLUSH_EVERY_S)
        f = self.files[worker]
        f.write_lines(data["lines"])
        f.flush()  # a shipment arrives every SHIP_EVERY_S: flush each one
        self.in_flight[worker] = data["in_flight"]
        self.durations.extend(data["post_s"])
        self.ok += data["ok"]
        self.failed += len(data["lines"]) - data["ok"]
        self.results += data["results"]
        self.iterations += data.get("iterations", 0)
        if data["final"]:
            self.finals.add(worker)

    def all_users_done(self) -> bool:
        return all(done >= n for done, n in zip(self.users_done, self.users, strict=True))

    def write_progress(self, state: str, workers: int) -> None:
        progress = {
            "t": round(time.time(), 6),
            "state": state,
            "started_at": self.started_at,
            "workers": workers,
            "ok": self.ok,
            "failed": self.failed,
            "in_flight": sum(self.in_flight.values()),
            "p95_s": quantile(self.durations, 0.95),  # result POSTs, failed ones included: latency_p95_s
            "results": self.results,
            "iterations": self.iterations,
        }
        tmp = self.load_dir / "progress.json.tmp"
        tmp.write_text(json.dumps(progress))
        tmp.replace(self.load_dir / "progress.json")

    def serve(self, start_users: Callable[[], None], workers: Callable[[], int]) -> str:
        """Run the plan to its end (or a halt); return ``ok`` or ``partial``."""
        self.started_at = time.time()
        start_users()
        status = "ok"
        while not self.all_users_done():
            if self.halted:
                status = "partial"
                break
            if workers() < self.nodes:
                log.error("a load worker left before the end; stopping")
                status = "partial"
                break
            self.write_progress("running", workers())
            gevent.sleep(SHIP_EVERY_S)
        self.broadcast("halt" if status != "ok" else "finish", {})
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while len(self.finals) < self.nodes and time.monotonic() < deadline:
            gevent.sleep(0.1)
        self.write_progress("stopped" if status != "ok" else "done", workers())
        for f in self.files.values():
            f.close()
        return status


# --- process entry points ---------------------------------------------------------------------------


def _environment(classes: list[type[User]], host: str | None = None) -> Environment:
    return Environment(user_classes=classes, events=locust.events, host=host)


def _own_classes(plan: Plan) -> list[type[User]]:
    """The user classes of the plan's locustfile workload (none without one), set up for this process."""
    for slot, planned in enumerate(plan.workloads):
        if isinstance(planned.workload, Locustfile):
            locustfile.set_environment(plan, planned)
            budget = locustfile.Budget(planned.workload, _user_done(slot))
            return locustfile.user_classes(planned, budget)
    return []


def _user_done(slot: int) -> Callable[[], None]:
    def done() -> None:
        assert users.NODE is not None
        users.NODE.send("user_done", {"slot": slot})
    return done


def _load_failure(error: Exception) -> str:
    if isinstance(error, ConfigError):
        return error.message
    return f"cannot load the locustfile: {type(error).__name__}: {error}"


def _master_classes(plan: Plan) -> list[type[User]]:
    classes: list[type[User]] = []
    for i, planned in enumerate(plan.workloads):
        if isinstance(planned.workload, Locustfile):
            continue  # its classes share out the users left, by their weights
        cls = SLOTS[i]
        cls.fixed_count = users_of(planned, plan.workers)
        classes.append(cls)
    return classes + _own_classes(plan)


def _token(plan: Plan | None) -> str:
    token = os.environ.get(TOKEN_ENV, "")
    if not token and plan is not None and plan.needs_token:  # a worker checks when the plan comes
        log.error("no API token in the environment of the load process")
        sys.exit(ChildExit.NO_TOKEN)
    return token


def _spawn_rate(plan: Plan, total: int) -> float:
    own = [p.workload.spawn_rate for p in plan.workloads if isinstance(p.workload, Locustfile)]
    return own[0] if own and own[0] is not None else max(total, 1)


def write_locust_stats(env: Environment, path: Path) -> None:
    """Write locust's own request statistics (per method and name: requests, failures), to check
    the records against."""
    entries = [{"method": e.method, "name": e.name, "num_requests": e.num_requests,
                "num_failures": e.num_failures} for e in env.stats.entries.values()]
    path.write_text(json.dumps(sorted(entries, key=lambda e: (e["name"], e["method"])), indent=1))


def run_hub(plan: Plan, load_dir: Path, bind: str | None) -> int:
    """Run the standalone process (``bind`` None) or the master; return the exit code."""
    try:
        classes = _master_classes(plan)
    except Exception as error:  # the user's module code may raise anything while it loads
        log.error("%s", _load_failure(error))
        return ChildExit.FAILED
    env = _environment(classes, plan.base_url)
    if bind is None:
        runner: Any = env.create_local_runner()
        users.NODE = node = Node(lambda kind, data: hub.handle(kind, data), _token(plan))
        node.environment = env
        locustfile.record_requests(env, node)
        hub = Hub(plan, load_dir, node.handle, nodes=1)
        node.handle("plan", {"plan": plan.model_dump(mode="json"), "worker": "w0"})
        gevent.spawn(node.shipper)
        workers: Callable[[], int] = lambda: 1  # noqa: E731
    else:
        host, port = bind.rsplit(":", 1)
        runner = env.create_master_runner(master_bind_host=host, master_bind_port=int(port))
        hub = Hub(plan, load_dir, lambda kind, data: runner.send_message(kind, data), nodes=plan.workers)

        def listener(kind: str) -> Callable[..., None]:
            def on_message(environment: Environment, msg: Any, **kw: Any) -> None:
                if kind == "hello":
                    runner.send_message("plan", {"plan": plan.model_dump(mode="json"),
                                                 "worker": f"w{msg.data['index']}"}, msg.node_id)
                hub.handle(kind, msg.data, msg.node_id)
            return on_message

        for kind in ("hello", "records", "wave_done", "user_done"):
            runner.register_message(kind, listener(kind))
        workers = lambda: int(runner.worker_count)  # noqa: E731
        hub.write_progress("waiting", 0)
        deadline = time.monotonic() + plan.workers_timeout_s
        while len(hub.hellos) < plan.workers:
            if time.monotonic() > deadline:
                hub.write_progress("failed", workers())
                log.error("only %d of %d load workers joined", len(hub.hellos), plan.workers)
                runner.quit()
                return ChildExit.NO_WORKERS
            gevent.sleep(0.1)
    gevent.signal_handler(signal.SIGTERM, lambda: setattr(hub, "halted", True))
    gevent.signal_handler(signal.SIGINT, lambda: setattr(hub, "halted", True))
    total = sum(hub.users)
    status = hub.serve(lambda: runner.start(total, spawn_rate=_spawn_rate(plan, total)), workers)
    runner.quit()
    if bind is None and _own_classes(plan):
        write_locust_stats(env, load_dir / "locust-stats.json")
    return ChildExit.OK if status == "ok" else ChildExit.PARTIAL


def run_worker(master: str, allow_remote: bool) -> int:
    """Join a master; return the exit code."""
    env = _environment(list(SLOTS))
    host, port = master.rsplit(":", 1)
    runner = env.create_worker_runner(host, int(port))
    users.NODE = node = Node(lambda kind, data: runner.send_message(kind, data), _token(None))
    node.environment = env
    locustfile.record_requests(env, node)
    refused: list[str] = []

    def on_plan(environment: Environment, msg: Any, **kw: Any) -> None:
        plan = Plan.model_validate(msg.data["plan"])
        try:  # this machine's own guard: a worker sends load only where its operator allows
            check_target(plan.base_url, allow_remote or (plan.allow_remote and is_loopback_host(host)))
        except ConfigError as error:
            log.error("%s", error.message)
            refused.append(error.message)
            runner.quit()
            return
        _token(plan)
        try:
            env.user_classes.extend(_own_classes(plan))  # before the master's spawn message, handled next
        except Exception as error:
            log.error("%s", _load_failure(error))
            refused.append(_load_failure(error))
            runner.quit()
            return
        node.handle("plan", msg.data)

    runner.register_message("plan", on_plan)
    for kind in ("wave_go", "halt", "finish"):
        runner.register_message(kind, lambda environment, msg, kind=kind, **kw: node.handle(kind, msg.data))
    node.send("hello", {"index": runner.worker_index})
    gevent.spawn(node.shipper)
    runner.greenlet.join()
    return ChildExit.REFUSED if refused else ChildExit.OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contend.load.child")
    sub = parser.add_subparsers(dest="role", required=True)
    hub = sub.add_parser("hub")
    hub.add_argument("--plan", type=Path, required=True)
    hub.add_argument("--bind", help="HOST:PORT to run as a master for --workers workers")
    worker = sub.add_parser("worker")
    worker.add_argument("--master", required=True)
    worker.add_argument("--allow-remote", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.role == "hub":
        plan = Plan.read(args.plan)
        return run_hub(plan, args.plan.parent, args.bind)
    return run_worker(args.master, args.allow_remote)


if __name__ == "__main__":
    sys.exit(main())
