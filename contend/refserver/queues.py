"""NATS JetStream as Antenna uses it: a stream and durable pull consumer per job, and the ml_results queue.

Per-job task queues open a new connection per call (as Antenna's TaskQueueManager does); the
``ml_results`` work queue (Antenna's Celery queue on RabbitMQ) is published to from the request
thread itself through a small pool of plain connections (what Celery's ``.delay()`` does with
kombu's producer pool) and consumed by the result workers, one message at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
from nats.js import api

from contend.flags import resolve_flags

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


def _connect_attempts() -> int:
    """The NATS_CONNECT_ATTEMPTS flag of this process (its default outside the server's processes)."""
    name = "NATS_CONNECT_ATTEMPTS"
    return int(resolve_flags(None, {name: os.environ[name]} if name in os.environ else {})[name])


async def _connect() -> Any:
    # nats-py makes max_reconnect_attempts attempts, 2 s apart, before it raises NoServersError.
    return await nats.connect(nats_url(), connect_timeout=5, allow_reconnect=False,
                              max_reconnect_attempts=_connect_attempts())


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
        except TimeoutError:
            # Nothing to reserve. nats-py says so with its TimeoutError or a bare asyncio one (the
            # builtin TimeoutError since Python 3.11); Antenna's reserve_tasks catches both here too.
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


class _NatsSocket:
    """One blocking NATS client connection that only publishes (core NATS, no JetStream PubAck).

    The ml_results stream captures whatever is published on its subject, so a publish is a socket
    write on the calling thread, as kombu's basic_publish without publisher confirms is.
    """

    def __init__(self, url: str) -> None:
        where = urlsplit(url)
        self.sock = socket.create_connection((where.hostname or "127.0.0.1", where.port or 4222), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._read_line()  # INFO {...}
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"lang":"python","version":"contend",'
                          b'"protocol":1,"name":"contend-ref-publisher"}\r\nPING\r\n')
        reply = self._read_line()
        if not reply.startswith(b"PONG"):
            raise OSError(f"NATS refused the connection: {reply[:200]!r}")
        self.sock.setblocking(False)

    def _read_line(self) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise OSError("NATS closed the connection")
            data += chunk
        return data

    def publish(self, subject: str, payload: bytes) -> None:
        self._answer_pings()
        self.sock.setblocking(True)
        try:
            self.sock.sendall(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
        finally:
            self.sock.setblocking(False)

    def _answer_pings(self) -> None:
        """Answer the server's keep-alive PINGs that arrived while the connection sat in the pool."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        if not data or b"-ERR" in data:
            raise OSError(f"NATS connection lost: {data[:200]!r}")
        for _ in range(data.count(b"PING\r\n")):
            self.sock.sendall(b"PONG\r\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class ResultPublisher:
    """Celery's ``.delay()`` as a NATS publish: on the calling thread, concurrent across threads.

    Like kombu's producer pool (``broker_pool_limit`` = 10), at most ``POOL_LIMIT`` connections per
    process, each used by one thread at a time; a thread that finds none free waits for one. The
    body is JSON compressed with gzip, as Antenna's Celery settings ask.
    """

    POOL_LIMIT = 10

    def __init__(self) -> None:
        self._free: list[_NatsSocket] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.POOL_LIMIT)
        self._stream_ready = False

    def _ensure_stream(self) -> None:
        if self._stream_ready:
            return
        async def work(nc: Any) -> None:
            await ensure_results_queue(nc.jetstream())
        run(work)
        self._stream_ready = True

    def publish(self, job_id: int, result_data: dict[str, Any], reply_subject: str) -> str:
        """Queue one result for the workers now (not on commit); return its task id."""
        task_id = str(uuid.uuid4())
        body = gzip.compress(json.dumps({"task_id": task_id, "job_id": job_id, "result_data": result_data,
                                         "reply_subject": reply_subject}).encode())
        self._ensure_stream()
        with self._slots:
            with self._lock:
                conn = self._free.pop() if self._free else None
            if conn is not None:
                try:
                    conn.publish(ML_RESULTS, body)
                except OSError:  # the server dropped an idle pooled connection: take a new one
                    conn.close()
                    conn = None
            if conn is None:
                conn = _NatsSocket(nats_url())
                try:
                    conn.publish(ML_RESULTS, body)
                except OSError:
                    conn.close()
                    raise
            with self._lock:
                self._free.append(conn)
        return task_id


def decode_result_message(data: bytes) -> dict[str, Any]:
    """Return the task a result message carries (gzip-compressed JSON)."""
    task: dict[str, Any] = json.loads(gzip.decompress(data))
    return task


publisher = ResultPublisher()
