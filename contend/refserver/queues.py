"""NATS JetStream as Antenna uses it: a stream and durable pull consumer per job, and the ml_results queue.

Per-job task queues open a new connection per call (as Antenna's TaskQueueManager does); the
``ml_results`` work queue (Antenna's Celery queue on RabbitMQ) is published to through one long-lived
connection per web process and consumed by the result workers, one message at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

import nats
from nats.js import api

ML_RESULTS = "ml_results"
ML_RESULTS_CONSUMER = "ml-results-workers"
MAX_ACK_PENDING = 1000
FETCH_TIMEOUT = 0.5

T = TypeVar("T")


def nats_url() -> str:
    return os.environ.get("CONTEND_REF_NATS", "nats://127.0.0.1:4222")


def stream_name(job_id: int) -> str:
    return f"job_{job_id}"


def subject(job_id: int) -> str:
    return f"job.{job_id}.tasks"


def consumer_name(job_id: int) -> str:
    return f"job-{job_id}-consumer"


async def _connect() -> Any:
    return await nats.connect(nats_url(), connect_timeout=5, allow_reconnect=False)


async def _with_connection(work: Callable[[Any], Awaitable[T]]) -> T:
    nc = await _connect()
    try:
        return await work(nc)
    finally:
        await nc.close()


def run(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(nc)`` on a new NATS connection from synchronous code (a request or task thread)."""
    return asyncio.run(_with_connection(work))


async def ensure_job_queue(js: Any, job_id: int, ttr: int, max_deliver: int) -> None:
    """Create the job's stream and durable pull consumer with Antenna's configuration."""
    await js.add_stream(name=stream_name(job_id), subjects=[subject(job_id)], max_age=86400)
    await js.add_consumer(stream_name(job_id), config=api.ConsumerConfig(
        durable_name=consumer_name(job_id), ack_policy=api.AckPolicy.EXPLICIT, ack_wait=float(ttr),
        max_deliver=max_deliver, deliver_policy=api.DeliverPolicy.ALL, max_ack_pending=MAX_ACK_PENDING,
        filter_subject=subject(job_id),
    ))


def queue_images(job_id: int, tasks: Iterable[dict[str, Any]], ttr: int, max_deliver: int) -> int:
    """Publish one task message per image to the job's stream; return how many were queued."""
    async def work(nc: Any) -> int:
        js = nc.jetstream()
        await ensure_job_queue(js, job_id, ttr, max_deliver)
        acks = [js.publish(subject(job_id), json.dumps(task).encode(), timeout=10) for task in tasks]
        await asyncio.gather(*acks)
        return len(acks)

    return run(work)


def reserve_tasks(job_id: int, count: int, ttr: int, max_deliver: int) -> list[dict[str, Any]]:
    """Fetch up to ``count`` tasks (0.5 s timeout); each gets the message's ack subject as reply_subject."""
    async def work(nc: Any) -> list[dict[str, Any]]:
        js = nc.jetstream()
        try:
            await js.stream_info(stream_name(job_id))
        except nats.js.errors.NotFoundError:
            return []
        try:
            await js.consumer_info(stream_name(job_id), consumer_name(job_id))
        except nats.js.errors.NotFoundError:
            await ensure_job_queue(js, job_id, ttr, max_deliver)
        psub = await js.pull_subscribe(subject(job_id), consumer_name(job_id), stream=stream_name(job_id))
        try:
            messages = await psub.fetch(count, timeout=FETCH_TIMEOUT)
        except nats.errors.TimeoutError:
            messages = []
        finally:
            await psub.unsubscribe()
        tasks = []
        for msg in messages:
            task = json.loads(msg.data)
            task["reply_subject"] = msg.reply
            tasks.append(task)
        return tasks

    return run(work)


def acknowledge(reply_subject: str) -> None:
    """Ack a task through its reply subject, on a new connection (as Antenna's result task does)."""
    async def work(nc: Any) -> None:
        await nc.publish(reply_subject, b"+ACK")
        await nc.flush()

    run(work)


def delete_job_queue(job_id: int) -> None:
    async def work(nc: Any) -> None:
        js = nc.jetstream()
        for call in (js.delete_consumer(stream_name(job_id), consumer_name(job_id)),
                     js.delete_stream(stream_name(job_id))):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await call

    run(work)


async def ensure_results_queue(js: Any) -> None:
    """Create the ml_results work queue and the durable consumer its workers share."""
    await js.add_stream(name=ML_RESULTS, subjects=[ML_RESULTS], retention=api.RetentionPolicy.WORK_QUEUE)
    await js.add_consumer(ML_RESULTS, config=api.ConsumerConfig(
        durable_name=ML_RESULTS_CONSUMER, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=600.0,
        max_ack_pending=-1, filter_subject=ML_RESULTS,
    ))


class ResultPublisher:
    """One NATS connection per web process, on its own event-loop thread, shared by request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._js: Any = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="nats-publisher", daemon=True).start()

                async def connect() -> Any:
                    nc = await _connect()
                    js = nc.jetstream()
                    await ensure_results_queue(js)
                    return js

                self._js = asyncio.run_coroutine_threadsafe(connect(), loop).result(10)
                self._loop = loop
            return self._loop

    def publish(self, job_id: int, result_data: dict[str, Any], reply_subject: str) -> str:
        """Queue one result for the workers now (not on commit); return its task id."""
        loop = self._start()
        task_id = str(uuid.uuid4())
        body = json.dumps({"task_id": task_id, "job_id": job_id, "result_data": result_data,
                           "reply_subject": reply_subject}).encode()
        publish = self._js.publish(ML_RESULTS, body, timeout=10)
        done: Future[Any] = asyncio.run_coroutine_threadsafe(publish, loop)
        done.result(15)
        return task_id


publisher = ResultPublisher()
