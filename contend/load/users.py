"""The users of a load process: the node that runs them and ships their records, and what each does.

Imported only by ``contend.load.child`` (it imports locust, whose gevent monkey-patching must never
reach contend's own process). ``Slot`` classes are the locust users, one per workload of the plan; a
user runs a ``BatchedPoster`` or a ``PullWorker`` (pollers, loaders, and a ``ResultPoster``) through
one ``Http`` client that records every request on the ``Node``.
"""

from __future__ import annotations

import locust  # noqa: F401  first: gevent's monkey-patching must precede the other imports

# isort: split
import itertools
import json
import logging
import random
import time
from collections.abc import Callable
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

from contend.errors import ConfigError
from contend.jsonl import dumps
from contend.load import bodies
from contend.load.config import BatchedPost, Locustfile, PullWorkers
from contend.load.plan import Plan, PlannedWorkload
from contend.load.records import request_record
from contend.target import check_target

MAX_WORKLOADS = 16
SHIP_EVERY_S = 0.5
IMAGE_ERROR = "_contend_image_error"
"""Key marking a task whose image did not load: its result is an error result, as ADC posts."""
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG")

log = logging.getLogger("contend.load")
Send = Callable[[str, dict[str, Any]], None]


def users_of(planned: PlannedWorkload, workers: int) -> int:
    """Return how many locust users a workload needs (an open model: one scheduler per process)."""
    w = planned.workload
    if isinstance(w, PullWorkers):
        return w.pollers
    if isinstance(w, Locustfile):
        return w.users
    assert isinstance(w, BatchedPost)
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
        self.iterations = 0
        """Task runs of a locustfile's users finished since the last shipment."""
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
        iterations, self.iterations = self.iterations, 0
        ok = [r for r in records if r["error"] is None]
        self.send("records", {
            "worker": self.worker,
            "lines": [dumps(r) for r in records],
            # Progress figures, so the hub need not parse lines: the live p95 is summary.json's
            # latency_p95_s so far (every result POST, a timed-out one with its timeout).
            "ok": len(ok),
            "post_s": [r["t1"] - r["t0"] for r in records if r["kind"] in ("result", "request")],
            "results": sum(r["results"] for r in ok),
            "in_flight": self.in_flight,
            "iterations": iterations,
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

    def __init__(self, node: Node, plan: Plan, timeout: float, concurrency: int, worker: str,
                 token: bool = True) -> None:
        assert node.environment is not None
        self.node = node
        self.worker = worker
        # Our records replace locust's statistics: a request event without listeners costs nothing.
        self.session = FastHttpSession(
            plan.base_url, EventHook(), None, insecure=False,  # type: ignore[no-untyped-call]
            network_timeout=timeout, connection_timeout=timeout, concurrency=concurrency,
            max_retries=0, max_redirects=3,
        )
        # ``token=False``: images, fetched as ADC does, without the API's token.
        self.headers = ({"Authorization": f"Token {node.token}", "Content-Type": "application/json"}
                        if token else {})

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
            elif isinstance(planned.workload, PullWorkers):
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
        self.image_http = (Http(node, plan, self.w.image_timeout_s, self.w.loaders * self.w.image_threads,
                                worker, token=False) if self.w.load_images else None)
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
                if self.image_http is not None:
                    self.load_images(job, tasks)
                queue.put(tasks)
        except gevent.GreenletExit:
            killed = True  # the run stopped: nobody reads the queue any more, a put could block forever
            raise
        finally:
            if not killed:
                queue.put(None)

    def load_images(self, job: int, tasks: list[dict[str, Any]]) -> None:
        """Download a batch's images, ``image_threads`` at a time (ADC's pool); mark those that failed."""
        slots = Semaphore(self.w.image_threads)

        def one(item: dict[str, Any]) -> None:
            with slots:
                if (error := self.load_image(job, item)) is not None:
                    item[IMAGE_ERROR] = error

        # In the user's group: a stopped run kills the downloads not yet started with the rest.
        gevent.joinall([self.group.spawn(one, t) for t in tasks])

    def load_image(self, job: int, task: dict[str, Any]) -> str | None:
        """GET one task's image (an ``image`` record: time and bytes); return why it failed, if it did."""
        assert self.image_http is not None
        url = str(task.get("image_url") or "")
        try:
            check_target(url, self.plan.allow_remote)  # the server names the URL: the same guard as ours
        except ConfigError as error:
            now = time.time()
            self.node.record(request_record(t0=now, t1=now, kind="image", status=0, sent=0, recv=0,
                                            error="Refused", job=job, worker=self.worker))
            return f"failed to load image: {error}"
        _, content, rec = self.image_http.call("GET", url, None, kind="image", job=job)
        if rec["error"] is None and not content.startswith(IMAGE_MAGIC):
            rec["error"] = "NotAnImage"  # PIL could not open it: ADC counts a failed image
        return None if rec["error"] is None else f"failed to load image: {rec['error']}"

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
                "result": {"error": t[IMAGE_ERROR], "image_id": str(t.get("image_id"))} if IMAGE_ERROR in t
                else bodies.pipeline_result(
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
