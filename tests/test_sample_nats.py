"""The NATS sampler against the stack's real JetStream server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from contend.sample.nats import NatsSampler
from contend.stack.nats import NatsServer

pytestmark = pytest.mark.integration  # every test here starts processes


async def _make_queues(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="job_7", subjects=["job.7.tasks"]))
        await js.add_stream(StreamConfig(name="ml_results", subjects=["ml.results"],
                                         retention=RetentionPolicy.WORK_QUEUE))
        await js.add_stream(StreamConfig(name="unrelated", subjects=["other"]))
        for i in range(5):
            await js.publish("job.7.tasks", f"task {i}".encode())
        for i in range(3):
            await js.publish("ml.results", f"result {i}".encode())
        await js.publish("other", b"x")
        config = ConsumerConfig(durable_name="job-7-consumer", ack_policy=AckPolicy.EXPLICIT, ack_wait=60)
        await js.add_consumer("job_7", config)
        sub = await js.pull_subscribe_bind("job-7-consumer", stream="job_7")
        msgs = await sub.fetch(2, timeout=5)
        # ack_sync waits for the server to take the ack; a plain ack() may not show in the monitor yet.
        await msgs[0].ack_sync()  # acked: 1, delivered but not acked: 1, never delivered: 3
    finally:
        await nc.close()


def test_consumer_progress_and_results_queue_depth(tmp_path: Path) -> None:
    # A server of its own: the stream names are the reference server's, which other tests use.
    with NatsServer(tmp_path / "nats") as server:
        asyncio.run(_make_queues(server.url))
        records = NatsSampler(server.monitor_url, clock=lambda: 123.0).tick()
    by_stream = {r["stream"]: r for r in records}
    assert set(by_stream) == {"job_7", "ml_results"}  # "unrelated" is not watched
    assert by_stream["job_7"] == {
        "t": 123.0, "stream": "job_7", "consumer": "job-7-consumer", "delivered": 2, "ack_floor": 1,
        "num_pending": 3, "num_ack_pending": 1, "num_redelivered": 0, "delivered_stream": 2,
    }
    # No consumer on the work queue yet: its depth is the stream's message count.
    assert by_stream["ml_results"]["consumer"] is None
    assert by_stream["ml_results"]["num_pending"] == 3
