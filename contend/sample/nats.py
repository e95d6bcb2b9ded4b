"""The NATS sampler: per-job consumer progress and the ``ml_results`` work-queue depth, at 1 Hz.

Read from the server's HTTP monitoring endpoint (``/jsz``), so it needs no client connection and
cannot disturb the consumers it watches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from contend.errors import SamplerError

RESULTS_STREAM = "ml_results"
JSZ_PATH = "/jsz?accounts=true&streams=true&consumers=true&config=false"


def fetch_jsz(monitor_url: str, timeout: float = 2.0, client: httpx.Client | None = None) -> dict[str, Any]:
    """Return the parsed ``/jsz`` document of a NATS server's monitoring endpoint.

    A sampler passes its own ``client``: a new one per read builds an SSL context each time
    (loading the CA bundle), which cost the sampler process more CPU than all its other work.
    """
    try:
        url = monitor_url.rstrip("/") + JSZ_PATH
        response = client.get(url, timeout=timeout) if client else httpx.get(url, timeout=timeout)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data
    except (httpx.HTTPError, ValueError) as exc:
        raise SamplerError(
            f"cannot read NATS monitoring at {monitor_url}: {exc}",
            hint="the NATS server must run with an HTTP monitoring port (--http_port)",
        ) from None


def is_watched(stream: str) -> bool:
    """Tell whether a stream is a job stream (``job_<id>``) or the results work queue."""
    return stream == RESULTS_STREAM or stream.startswith("job_")


def records_from_jsz(t: float, jsz: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one ``samples/nats.jsonl`` record per consumer of each watched stream.

    A watched stream without consumers still gets one record (consumer null) whose
    ``num_pending`` is the stream's message count: the queue depth nobody consumes yet.
    """
    records = []
    for account in jsz.get("account_details") or ():
        for stream in account.get("stream_detail") or ():
            name = str(stream.get("name"))
            if not is_watched(name):
                continue
            consumers = stream.get("consumer_detail") or ()
            for consumer in consumers:
                records.append({
                    "t": t,
                    "stream": name,
                    "consumer": consumer.get("name"),
                    "delivered": (consumer.get("delivered") or {}).get("consumer_seq", 0),
                    "ack_floor": (consumer.get("ack_floor") or {}).get("consumer_seq", 0),
                    "num_pending": consumer.get("num_pending", 0),
                    "num_ack_pending": consumer.get("num_ack_pending", 0),
                    "num_redelivered": consumer.get("num_redelivered", 0),
                    # Last stream sequence delivered: with ``delivered`` it counts redeliveries so far.
                    "delivered_stream": (consumer.get("delivered") or {}).get("stream_seq", 0),
                })
            if not consumers:
                records.append({
                    "t": t, "stream": name, "consumer": None, "delivered": 0, "ack_floor": 0,
                    "num_pending": (stream.get("state") or {}).get("messages", 0),
                    "num_ack_pending": 0, "num_redelivered": 0, "delivered_stream": 0,
                })
    return records


class NatsSampler:
    """Reads the monitoring endpoint once per ``tick()``."""

    def __init__(
        self,
        monitor_url: str,
        *,
        clock: Callable[[], float] = time.time,
        fetch: Callable[[str], dict[str, Any]] | None = None,
    ) -> None:
        self.monitor_url = monitor_url
        self.clock = clock
        self.client = httpx.Client()
        self.fetch = fetch or (lambda url: fetch_jsz(url, client=self.client))

    def close(self) -> None:
        self.client.close()

    def tick(self) -> list[dict[str, Any]]:
        t = self.clock()
        return records_from_jsz(t, self.fetch(self.monitor_url))
