"""Lock waits, timed exactly: from pg_locks.waitstart in the sampler's ticks, and from the server's log.

Each tick records, per backend waiting on a heavyweight lock, ``waitstart`` (server clock, exact,
the wait's identity together with the pid) and its ``age`` at that tick. A wait then starts at
``t - age`` on the samplers' clock (the tick's time ``t``) and lasts at least until the last tick
that saw it: its duration is known to within one tick. ``log_lock_waits`` lines are a second source,
independent of the sampler: every wait longer than ``deadlock_timeout`` (docs/metrics.md, "Lock waits").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from contend.pglog import LockWait
from contend.stats import quantile

# A logged wait and a sampled one are the same when pid and start (both on the server clock) agree
# to this much: the log's start is its millisecond timestamp minus the logged duration, both taken
# while the server writes the line (a busy machine may put milliseconds between them).
MATCH_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class Wait:
    """One lock wait the sampler saw: start (samplers' clock), last tick that saw it, and the next tick."""

    pid: int
    waitstart: float
    """Server clock, as pg_locks gives it: the wait's identity."""
    start: float
    last_seen: float
    next_tick: float | None
    """The first tick after ``last_seen`` (the wait had ended by then); None after the last tick."""

    @property
    def duration(self) -> float:
        """At least this long; less than one tick interval longer."""
        return self.last_seen - self.start


def waits_from_ticks(ticks: Iterable[dict[str, Any]]) -> list[Wait]:
    """Return the distinct lock waits of tick records (sorted by ``t``), by start."""
    found: dict[tuple[int, float], list[float]] = {}  # key -> [start, last_seen, next_tick or nan]
    open_keys: set[tuple[int, float]] = set()
    for tick in ticks:
        t = float(tick["t"])
        seen: set[tuple[int, float]] = set()
        for w in tick.get("waits") or ():
            if w.get("waitstart") is None:
                continue
            key = (int(w["pid"]), round(float(w["waitstart"]), 6))
            seen.add(key)
            if key in found:
                found[key][1] = t
            else:
                found[key] = [t - float(w.get("age") or 0.0), t, float("nan")]
        for key in open_keys - seen:
            found[key][2] = t
        open_keys = seen
    return sorted(
        (Wait(pid, ws, start, last, None if nxt != nxt else nxt)  # nan: still open at the last tick
         for (pid, ws), (start, last, nxt) in found.items()),
        key=lambda w: w.start,
    )


def _overlapping(waits: Sequence[Wait], window: tuple[float, float] | None) -> list[Wait]:
    if window is None:
        return list(waits)
    return [w for w in waits if w.start <= window[1] and w.last_seen >= window[0]]


def wait_metrics(waits: Sequence[Wait], window: tuple[float, float] | None) -> dict[str, float | int | None]:
    """Distinct waits overlapping ``window``, their duration p50/p95/max, and the seconds spent waiting
    inside the window (each wait clipped to it, Σ over waits)."""
    inside = _overlapping(waits, window)
    durations = sorted(w.duration for w in inside)
    lo, hi = window if window is not None else (float("-inf"), float("inf"))
    return {
        "lock_waits": len(inside),
        "lock_wait_p50_s": quantile(durations, 0.50),
        "lock_wait_p95_s": quantile(durations, 0.95),
        "lock_wait_max_s": durations[-1] if durations else None,
        "blocked_seconds": sum(max(0.0, min(w.last_seen, hi) - max(w.start, lo)) for w in inside),
    }


def coverage(logged: Sequence[LockWait], sampled: Sequence[Wait],
             window: tuple[float, float] | None = None) -> tuple[int, int]:
    """Of the waits the server logged (starting inside ``window``, server clock ~ samplers' clock on
    one machine), how many the sampler saw: (seen, logged)."""
    starts: dict[int, list[float]] = {}
    for w in sampled:
        starts.setdefault(w.pid, []).append(w.waitstart)
    relevant = [w for w in logged if window is None or window[0] <= w.start <= window[1]]
    seen = sum(1 for w in relevant
               if any(abs(s - w.start) <= MATCH_TOLERANCE_S for s in starts.get(w.pid, ())))
    return seen, len(relevant)
