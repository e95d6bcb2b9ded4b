"""Request bodies of the Antenna wire contract (sections 3.3, 3.4 and 5 of antenna-behaviour.md).

Pure functions returning bytes, so the load processes serialise each body once and the body
size in the records is exact.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

# The algorithms the reference server registers on its pipeline (contend/refserver/fixtures.py); a
# real Antenna target needs them registered too, or save_results fails (PipelineNotConfigured).
DETECTOR = {"name": "Example detector", "key": "example_detector"}
CLASSIFIER = {"name": "Example classifier", "key": "example_classifier"}


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def tasks_body(batch_size: int) -> bytes:
    """Return the body of ``POST /jobs/{id}/tasks/``."""
    return dumps({"batch_size": batch_size})


def error_entries(prefix: str, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Return the entries Antenna's load script sends: PipelineResultsError with fake ids."""
    return [
        {
            "reply_subject": f"{prefix}.r{i}.{rng.getrandbits(32):08x}",
            "result": {"error": "load-test", "image_id": f"img-{prefix}-{i}"},
        }
        for i in range(count)
    ]


def pipeline_result(
    pipeline: str, image_id: str, image_url: str, detections: int, classifications: int, rng: random.Random
) -> dict[str, Any]:
    """Return one PipelineResultsResponse for one image, with the given numbers of boxes and labels."""
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    boxes = []
    for _ in range(detections):
        x, y = rng.uniform(0, 900), rng.uniform(0, 600)
        boxes.append(
            {
                "source_image_id": image_id,
                "bbox": {"x1": round(x, 1), "y1": round(y, 1),
                         "x2": round(x + 80, 1), "y2": round(y + 60, 1)},
                "algorithm": DETECTOR,
                "inference_time": 0.01,
                "timestamp": now,
                "classifications": [
                    {
                        "classification": f"species-{rng.randrange(1000)}",
                        "labels": None,
                        "scores": [round(rng.random(), 3)],
                        "algorithm": CLASSIFIER,
                        "terminal": True,
                        "timestamp": now,
                    }
                    for _ in range(classifications)
                ],
            }
        )
    return {
        "pipeline": pipeline,
        "total_time": 0.1,
        "source_images": [{"id": image_id, "url": image_url}],
        "detections": boxes,
    }


def realistic_entries(
    prefix: str,
    pipeline: str,
    image_ids: Sequence[str],
    count: int,
    detections: int,
    classifications: int,
    rng: random.Random,
) -> list[dict[str, Any]]:
    """Return ``count`` result entries for real image ids (reused round-robin, from a random start)."""
    start = rng.randrange(len(image_ids))
    entries = []
    for i in range(count):
        image = str(image_ids[(start + i) % len(image_ids)])
        entries.append(
            {
                "reply_subject": f"{prefix}.r{i}.{rng.getrandbits(32):08x}",
                "result": pipeline_result(pipeline, image, f"contend://image/{image}", detections,
                                          classifications, rng),
            }
        )
    return entries


def results_body(entries: list[dict[str, Any]]) -> bytes:
    """Return the body of ``POST /jobs/{id}/result/``."""
    return dumps({"results": entries})
