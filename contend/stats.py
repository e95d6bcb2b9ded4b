"""One definition of each statistic contend reports, used by the live display, `contend load`'s
table, summary.json and the gate alike. Pure Python: no numpy, so the load processes can use it.

- ``quantile``: linear interpolation between the two nearest ranks (numpy's and pandas' default).
- ``is_timeout``: a request error whose text says "timeout", any case (ReadTimeout, ConnectTimeout,
  "statement timeout" ...).
- ``bootstrap_interval``: the 95 % percentile-bootstrap interval of a difference of medians.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


def quantile(values: Sequence[float], q: float) -> float | None:
    """Return the ``q`` quantile (0..1) of ``values``, interpolated linearly; None when empty.

    >>> quantile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.5
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def is_timeout(error: Any) -> bool:
    """Tell whether a request's recorded error is a timeout."""
    return isinstance(error, str) and "timeout" in error.lower()


def bootstrap_interval(
    values: Sequence[float], base: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE, seed: int = 0,
) -> tuple[float, float]:
    """The ``confidence`` interval of median(values) - median(base), by percentile bootstrap.

    Each resample draws both groups again with replacement; the interval is the middle
    ``confidence`` share of the resampled differences. Seeded, so a report re-renders the same.
    """
    rng = random.Random(seed)
    def median_of_resample(group: Sequence[float]) -> float:
        return statistics.median(rng.choices(group, k=len(group)))

    diffs = sorted(median_of_resample(values) - median_of_resample(base) for _ in range(resamples))
    tail = (1.0 - confidence) / 2.0
    low, high = quantile(diffs, tail), quantile(diffs, 1.0 - tail)
    assert low is not None and high is not None
    return low, high
