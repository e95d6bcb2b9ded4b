"""The load process: contend's workloads as locust users, run standalone, as a master or as a worker.

Run it only as ``python -m contend.load.child`` (the launcher does): importing locust monkey-patches
the interpreter with gevent, which must never happen in contend's own process.

Roles, and what travels over locust's messaging between them (the token never does):

- the *hub* (in the master, or in the standalone process) sends the plan to each node, releases
  the waves of batched POSTs (a wave starts when every user finished the previous one, across all
  workers), writes every node's records to ``load/requests-<node>.jsonl`` and ``load/progress.json``;
- a *node* (each worker, or the standalone process) runs the users and ships its records to the hub
  every ``SHIP_EVERY_S``.
"""

from __future__ import annotations

import locust  # first: gevent's monkey-patching must precede the other imports

# isort: split
import argparse
import itertools
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.pool import Group
from gevent.queue import Queue
from locust import User, constant, task
from locust.contrib.fasthttp import FastHttpSession
from locust.env import Environment
from locust.event import EventHook
from locust.exception import StopUser

from contend.errors import ChildExit, ConfigError
from contend.jsonl import JsonlWriter, dumps
from contend.load import bodies
from contend.load.config import BatchedPost, PullWorkers
from contend.load.plan import TOKEN_ENV, Plan, PlannedWorkload
from contend.load.records import FLUSH_EVERY_S, request_record
from contend.stats import quantile
from contend.target import check_target, is_loopback_host

MAX_WORKLOADS = 16
SHIP_EVERY_S = 0.5
FINISH_TIMEOUT_S = 20.0

log = logging.getLogger("contend.load")
Send = Callable[[str, dict[str, Any]], None]


def users_of(planned: PlannedWorkload, workers: int) -> int:
    """Return how many locust users a workload needs (an open model: one scheduler per process)."""
    w = planned.workload
    if isinstance(w, PullWorkers):
        return w.pollers
    if w.arrival_rate is not None:
        return max(1, workers)
    return w.concurrency


def error_class(error: BaseException | None) -> str:
    """Return the records' error class of a transport error (names follow httpx's where they exist)."""
    if error is None:
        return "NoResponse"
    if isinstance(error, TimeoutError | gevent.Timeout) or "timed out" in str(error):
        return "ReadTimeout"
    if isinstance(error, ConnectionRefusedError):
        return "ConnectError"
    return type(error).__name__


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
        self.ok = self.failed = self.results = 0
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


# --- the node: worker or standalone -----------------------------------------------------------------


class Node:
    """Runs the users of one load process and ships their records to the hub."""

    def __init__(self, send: Send, token: str) -> None:
        self.send = send
        self.token = token
        self.plan: Plan | None = None
        self.worker = "w0"
        self.plan_ready = Event()
        self.waves: dict[tuple[int, int], Event] = {}
        self.halted = Event()
        self.records: list[dict[str, Any]] = []
        self.in_flight = 0
        self.finished = False
        self.user_numbers = itertools.count()
        self.tasks_seen: set[tuple[int, str]] = set()
        self.results_seen: set[tuple[int, str]] = set()
        self.environment: Environment | None = None

    def handle(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "plan":
            self.plan = Plan.model_validate(data["plan"])
            self.worker = data["worker"]
            self.plan_ready.set()
        elif kind == "wave_go":
            self.wave(data["slot"], data["wave"]).set()
        elif kind == "halt":
            self.halted.set()
            if self.environment is not None and self.environment.runner is not None:
                self.environment.runner.stop()
            self.ship(final=True)
        elif kind == "finish":
            self.ship(final=True)

    def wave(self, slot: int, wave: int) -> Event:
        return self.waves.setdefault((slot, wave), Event())

    def record(self, rec: dict[str, Any]) -> None:
        # Kept as a dict until shipped: the caller may still add what the response said (tasks, dups).
        self.records.append(rec)

    def ship(self, final: bool = False) -> None:
        if self.finished:
            return
        records, self.records = self.records, []
        self.finished = final
        ok = [r for r in records if r["error"] is None]
        self.send("records", {
            "worker": self.worker,
            "lines": [dumps(r) for r in records],
            # Progress figures, so the hub need not parse lines: the live p95 is summary.json's
            # latency_p95_s so far (every result POST, a timed-out one with its timeout).
            "ok": len(ok),
            "post_s": [r["t1"] - r["t0"] for r in records if r["kind"] == "result"],
            "results": sum(r["results"] for r in ok),
            "in_flight": self.in_flight,
            "final": final,
        })

    def shipper(self) -> None:
        while not self.finished:
            gevent.sleep(SHIP_EVERY_S)
            self.ship()


NODE: Node | None = None
"""The node of this process; users reach it through here (locust creates the users)."""


class Http:
    """One client of the target: records every request it sends."""

    def __init__(self, node: Node, plan: Plan, timeout: float, concurrency: int, worker: str) -> None:
        assert node.environment is not None
        self.node = node
        self.worker = worker
        # Our records replace locust's statistics: a request event without listeners costs nothing.
        self.session = FastHttpSession(
            plan.base_url, EventHook(), None, insecure=False,  # type: ignore[no-untyped-call]
            network_timeout=timeout, connection_timeout=timeout, concurrency=concurrency,
            max_retries=0, max_redirects=3,
        )
        self.headers = {"Authorization": f"Token {node.token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: bytes | None, *, kind: str, job: int | None,
             wave: int | None = None, results: int = 0) -> tuple[int, bytes, dict[str, Any]]:
        """Send one request; return its status, body and the record (already queued for the hub)."""
        t0 = time.time()
        status, content = 0, b""
        error: str | None = "Stopped"
        self.node.in_flight += 1
        try:
            resp: Any = self.session.request(method, path, data=body,  # type: ignore[arg-type]
                                             headers=self.headers, name=kind)
            status = int(resp.status_code or 0)
            if status:
                content = resp.content or b""
                error = None if 200 <= status < 300 else f"HTTP {status}"
            else:
                error = error_class(getattr(resp, "error", None))
        finally:  # also when the user is killed mid-request: the record says "Stopped"
            self.node.in_flight -= 1
            rec = request_record(
                t0=t0, t1=time.time(), kind=kind, status=status, sent=len(body or b""),
                recv=len(content), error=error, job=job, worker=self.worker, results=results, wave=wave,
            )
            self.node.record(rec)
        return status, content, rec


class Slot(User):
    """A user running workload number ``slot`` of the plan (locust needs the classes up front)."""

    abstract = True
    slot = 0
    wait_time = constant(0)

    @task
    def main(self) -> None:
        node = NODE
        assert node is not None
        node.plan_ready.wait()
        assert node.plan is not None
        planned = node.plan.workloads[self.slot]
        worker = f"{node.worker}-u{next(node.user_numbers)}"
        try:
            if isinstance(planned.workload, BatchedPost):
                BatchedPoster(node, node.plan, planned, self.slot, worker).run()
            else:
                PullWorker(node, node.plan, planned, worker).run()
        finally:
            node.send("user_done", {"slot": self.slot})
        raise StopUser()


SLOTS: list[type[Slot]] = [
    type(f"Slot{i}", (Slot,), {"slot": i, "abstract": False}) for i in range(MAX_WORKLOADS)
]


class BatchedPoster:
    """Antenna's load script as one user: one POST per wave (or a closed loop, or a schedule)."""

    def __init__(self, node: Node, plan: Plan, planned: PlannedWorkload, slot: int, worker: str) -> None:
        assert isinstance(planned.workload, BatchedPost)
        self.w: BatchedPost = planned.workload
        self.node, self.plan, self.planned, self.slot, self.worker = node, plan, planned, slot, worker
        self.rng = random.Random(f"{worker}-{slot}")
        self.path = f"/api/v2/jobs/{planned.job}/result/"
        self.http = Http(node, plan, self.w.timeout_s, self.w.concurrency, worker)

    def body(self, prefix: str) -> bytes:
        w = self.w
        if w.body == "realistic":
            entries = bodies.realistic_entries(
                prefix, self.planned.pipeline_slug or "", self.planned.image_ids, w.batch,
                w.detections_per_image, w.classifications_per_detection, self.rng,
            )
        else:
            entries = bodies.error_entries(prefix, w.batch, self.rng)
        return bodies.results_body(entries)

    def post(self, wave: int | None, n: int) -> None:
        prefix = f"r{wave if wave is not None else 0}_{self.worker}-{n}"
        self.http.call("POST", self.path, self.body(prefix), kind="result", job=self.planned.job,
                       wave=wave, results=self.w.batch)

    def run(self) -> None:
        w = self.w
        if w.rounds is not None:
            for wave in range(1, w.rounds + 1):
                if wave > 1:
                    self.node.wave(self.slot, wave).wait()
                self.post(wave, 0)
                self.node.send("wave_done", {"slot": self.slot, "wave": wave})
            return
        assert w.duration_s is not None
        deadline = time.monotonic() + w.duration_s
        if w.arrival_rate is None:
            for n in itertools.count():
                if time.monotonic() >= deadline:
                    return
                self.post(None, n)
        # Open model: starts on a fixed schedule; when `concurrency` POSTs are in flight the next
        # start waits for a free slot (the schedule then slips, visible in the records' t0).
        schedulers = users_of(self.planned, self.plan.workers)
        interval = schedulers / (w.arrival_rate or 1.0)
        posts = Group()
        slots = Semaphore(w.concurrency)
        start = time.monotonic()
        try:
            for n in itertools.count():
                due = start + n * interval
                if due >= deadline:
                    break
                gevent.sleep(max(0.0, due - time.monotonic()))
                slots.acquire()
                posts.spawn(self._post_released, slots, n)
            posts.join()
        finally:
            posts.kill()

    def _post_released(self, slots: Semaphore, n: int) -> None:
        try:
            self.post(None, n)
        finally:
            slots.release()


class PullWorker:
    """One ADC GPU process (section 7): poll jobs, reserve tasks with loaders, infer, post results."""

    def __init__(self, node: Node, plan: Plan, planned: PlannedWorkload, worker: str) -> None:
        assert isinstance(planned.workload, PullWorkers)
        self.w: PullWorkers = planned.workload
        self.node, self.plan, self.worker = node, plan, worker
        self.slug = self.w.pipeline_slug or planned.pipeline_slug or ""
        self.rng = random.Random(f"{self.w.seed}-{worker}")
        self.tasks_http = Http(node, plan, self.w.tasks_timeout_s, self.w.loaders + 1, worker)
        self.result_http = Http(node, plan, self.w.result_timeout_s, self.w.posters, worker)
        self.warm = False
        self.deadline = 0.0
        self.group = Group()
        """Loaders and posters: killed with the user, so a stopped run sends nothing more."""

    def run(self) -> None:
        self.deadline = time.monotonic() + self.w.duration_s
        try:
            while time.monotonic() < self.deadline:
                worked = False
                for job in self.poll():
                    if time.monotonic() >= self.deadline:
                        break
                    worked = self.process_job(job) or worked
                if not worked:
                    gevent.sleep(max(0.0, min(self.w.idle_sleep_s, self.deadline - time.monotonic())))
        finally:
            self.group.kill()

    def poll(self) -> list[int]:
        path = ("/api/v2/jobs/?ids_only=1&incomplete_only=1&dispatch_mode=async_api"
                f"&pipeline__slug__in={self.slug}")
        status, content, _ = self.tasks_http.call("GET", path, None, kind="poll", job=None)
        if not 200 <= status < 300:
            return []  # ADC's get_jobs returns [] on any error
        try:
            return [int(item["id"]) for item in json.loads(content)["results"]]
        except (ValueError, KeyError, TypeError):
            return []

    def infer_s(self, images: int) -> float:
        spread = 1 + self.rng.uniform(-self.w.jitter, self.w.jitter)
        cold = 0.0 if self.warm else self.w.cold_start_s
        self.warm = True
        return cold + self.w.per_image_s * images * spread

    def load_tasks(self, job: int, queue: Queue) -> None:
        """One DataLoader subprocess: reserve batches until the job is empty or an error comes."""
        killed = False
        try:
            while time.monotonic() < self.deadline:
                status, content, rec = self.tasks_http.call(
                    "POST", f"/api/v2/jobs/{job}/tasks/", bodies.tasks_body(self.w.batch_size),
                    kind="tasks", job=job)
                if not 200 <= status < 300:
                    return
                try:
                    tasks = json.loads(content)["tasks"]
                except (ValueError, KeyError, TypeError):
                    return
                keys = [(job, str(t.get("image_id", t.get("id")))) for t in tasks]
                rec["tasks"] = len(tasks)
                rec["dup_tasks"] = sum(k in self.node.tasks_seen for k in keys)
                self.node.tasks_seen.update(keys)
                if not tasks:
                    return
                queue.put(tasks)
        except gevent.GreenletExit:
            killed = True  # the run stopped: nobody reads the queue any more, a put could block forever
            raise
        finally:
            if not killed:
                queue.put(None)

    def process_job(self, job: int) -> bool:
        w = self.w
        queue: Queue = Queue(maxsize=w.loaders * w.prefetch)
        loaders = [self.group.spawn(self.load_tasks, job, queue) for _ in range(w.loaders)]
        poster = ResultPoster(self, job)
        ended = batches = 0
        while ended < w.loaders:
            tasks = queue.get()
            if tasks is None:
                ended += 1
                continue
            if time.monotonic() >= self.deadline:
                continue  # the run is over: reserved tasks stay unacked, as when a worker stops
            batches += 1
            gevent.sleep(self.infer_s(len(tasks)))
            poster.submit(tasks)
        gevent.joinall(loaders)
        poster.wait_all()
        return batches > 0

    def result_entries(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "reply_subject": t.get("reply_subject"),
                "result": bodies.pipeline_result(
                    self.slug, str(t.get("image_id")), str(t.get("image_url", "")), 2, 2, self.rng),
            }
            for t in tasks
        ]


class ResultPoster:
    """ADC's ResultPoster: 2 concurrent POSTs, at most 5 pending, no retry, drop on a 30 s stall."""

    STALL_S = 30.0

    def __init__(self, pw: PullWorker, job: int) -> None:
        self.pw, self.job = pw, job
        self.running = Semaphore(pw.w.posters)
        self.pending: list[gevent.Greenlet] = []
        self.started: set[int] = set()

    def submit(self, tasks: list[dict[str, Any]]) -> None:
        self.pending = [g for g in self.pending if not g.ready()]
        if len(self.pending) >= self.pw.w.max_pending:
            done = gevent.wait(self.pending, timeout=self.STALL_S, count=1)
            if not done:  # ADC cancels what has not started; those results are lost
                for g in self.pending:
                    if id(g) not in self.started:
                        g.kill(block=False)
            self.pending = [g for g in self.pending if not g.ready()]
        self.pending.append(self.pw.group.spawn(self._post, tasks))

    def _post(self, tasks: list[dict[str, Any]]) -> None:
        with self.running:
            self.started.add(id(gevent.getcurrent()))
            keys = [(self.job, str(t.get("image_id"))) for t in tasks]
            body = bodies.results_body(self.pw.result_entries(tasks))
            _, _, rec = self.pw.result_http.call("POST", f"/api/v2/jobs/{self.job}/result/", body,
                                                 kind="result", job=self.job, results=len(tasks))
            seen = self.pw.node.results_seen
            rec["dup_results"] = sum(k in seen for k in keys)
            seen.update(keys)

    def wait_all(self) -> None:
        timeout = max(60.0, len(self.pending) * 30.0)
        gevent.joinall(self.pending, timeout=timeout)


# --- process entry points ---------------------------------------------------------------------------


def _environment(classes: list[type[User]]) -> Environment:
    return Environment(user_classes=classes, events=locust.events)


def _master_classes(plan: Plan) -> list[type[User]]:
    classes: list[type[User]] = []
    for i, planned in enumerate(plan.workloads):
        cls = SLOTS[i]
        cls.fixed_count = users_of(planned, plan.workers)
        classes.append(cls)
    return classes


def _token() -> str:
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        log.error("no API token in the environment of the load process")
        sys.exit(ChildExit.NO_TOKEN)
    return token


def run_hub(plan: Plan, load_dir: Path, bind: str | None) -> int:
    """Run the standalone process (``bind`` None) or the master; return the exit code."""
    global NODE
    classes = _master_classes(plan)
    env = _environment(classes)
    if bind is None:
        runner: Any = env.create_local_runner()
        NODE = node = Node(lambda kind, data: hub.handle(kind, data), _token())
        node.environment = env
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
    status = hub.serve(lambda: runner.start(total, spawn_rate=max(total, 1)), workers)
    runner.quit()
    return ChildExit.OK if status == "ok" else ChildExit.PARTIAL


def run_worker(master: str, allow_remote: bool) -> int:
    """Join a master; return the exit code."""
    global NODE
    env = _environment(list(SLOTS))
    host, port = master.rsplit(":", 1)
    runner = env.create_worker_runner(host, int(port))
    NODE = node = Node(lambda kind, data: runner.send_message(kind, data), _token())
    node.environment = env
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
