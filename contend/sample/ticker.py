"""When the Postgres sampler ticks: a fixed-rate schedule that stretches to keep within a CPU budget.

A tick's CPU (its thread's, ``time.thread_time`` around the tick; its Postgres backend's is the
server's, measured apart by benchmarks/bench_sampler_curve.py) is handed to ``Ticker.spend``; each
second the Ticker compares the window's CPU with its budget (``cpu_budget_pct`` of one core). Over
it, the interval stretches to what the ticks cost divided by the budget (never slower than 1 Hz,
nor slower than the interval asked for when that is already slower); when the cost falls, the
interval comes back, down to the one asked for. Each tick record carries the interval it ran at
(``interval_s``), so ``lowered_episodes`` finds when and how far the rate was lowered, for the
report and ``contend watch``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contend.sample.pg import PgSampler

SLOWEST_INTERVAL_S = 1.0
"""The budget never stretches the interval beyond this (1 Hz)."""
WINDOW_S = 1.0
"""Seconds of ticks whose CPU is compared with the budget."""
COME_BACK = 0.8
"""The interval shortens again only when the cost asks for less than this share of it (no flapping)."""


class Ticker:
    """A fixed-rate schedule: tick ``k`` is due at start + k x interval, whatever a tick cost.

    ``late_ms`` is how far behind its due time the current tick began; a loop that fell behind
    records the lateness and does not replay the ticks it missed. With ``cpu_budget_pct``, the
    interval follows the CPU the ticks cost (``spend``).
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic,
                 cpu_budget_pct: float | None = None) -> None:
        self.asked_s = interval_s
        self.interval_s = interval_s
        self.clock = clock
        self.next_at = clock()
        self.cpu_budget_pct = cpu_budget_pct
        self._window_at = self.next_at
        self._window_cpu = 0.0
        self._window_ticks = 0

    def late_ms(self) -> float:
        """Return how late the tick beginning now is, in milliseconds."""
        return max(0.0, self.clock() - self.next_at) * 1000.0

    def wait_s(self) -> float:
        """Schedule the next tick; return the seconds to wait for it (0 when already behind)."""
        self.next_at += self.interval_s
        now = self.clock()
        if self.next_at < now:
            self.next_at = now
        return self.next_at - now

    def spend(self, cpu_s: float) -> None:
        """Count one tick's CPU seconds; at the end of a window, fit the interval to the budget."""
        if not self.cpu_budget_pct:
            return
        self._window_cpu += cpu_s
        self._window_ticks += 1
        now = self.clock()
        if now - self._window_at < WINDOW_S:
            return
        per_tick = self._window_cpu / self._window_ticks
        slowest = max(self.asked_s, SLOWEST_INTERVAL_S)
        needed = round(min(slowest, max(self.asked_s, per_tick / (self.cpu_budget_pct / 100.0))), 4)
        if needed > self.interval_s or needed < COME_BACK * self.interval_s:
            self.interval_s = needed
        self._window_at, self._window_cpu, self._window_ticks = now, 0.0, 0


def lowered_episodes(ticks: Iterable[Mapping[str, Any]],
                     asked_s: float | None = None) -> list[dict[str, Any]]:
    """Return the stretches of ticks run slower than asked: start and end ``t``, the rate asked for,
    the lowest rate reached and the most backends seen meanwhile.

    ``asked_s`` is the interval asked for; none: the shortest interval among the ticks.
    """
    rows = [(float(t["t"]), float(t["interval_s"]), int(t.get("backends") or 0))
            for t in ticks if t.get("interval_s")]
    if not rows:
        return []
    asked = asked_s if asked_s is not None else min(interval for _, interval, _ in rows)
    episodes: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for t, interval, backends in sorted(rows):
        if interval > asked * 1.001:
            if current is None:
                current = {"start": t, "end": t, "asked_hz": 1.0 / asked, "lowest_hz": 1.0 / interval,
                           "backends": backends}
                episodes.append(current)
            current["end"] = t
            current["lowest_hz"] = min(current["lowest_hz"], 1.0 / interval)
            current["backends"] = max(current["backends"], backends)
        else:
            current = None
    return episodes


def describe_episode(episode: Mapping[str, Any], since: float) -> str:
    """``10 Hz lowered to 4 Hz from 12.0 s to 40.5 s: 1,050 backends`` (seconds after ``since``)."""
    return (f"{episode['asked_hz']:.3g} Hz lowered to {episode['lowest_hz']:.2g} Hz "
            f"from {episode['start'] - since:.1f} s to {episode['end'] - since:.1f} s: "
            f"{episode['backends']:,} backends")


class Budget:
    """The watch's sampler on its CPU budget: the CPU of each tick (reading only, not drawing) goes
    to the Ticker, and ``lowered`` says since when and how far the rate is lowered."""

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker
        self.since: float | None = None

    def tick(self, sampler: PgSampler) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        cpu_at = time.thread_time()
        found = sampler.tick(late_ms=self.ticker.late_ms(), interval_s=self.ticker.interval_s)
        self.ticker.spend(time.thread_time() - cpu_at)
        return found

    def lowered(self, tick: Mapping[str, Any]) -> list[str]:
        """A line while the rate is lowered (none otherwise)."""
        if self.ticker.interval_s <= self.ticker.asked_s:
            self.since = None
            return []
        self.since = self.since or tick["t"]
        return [f"sampler {1 / self.ticker.asked_s:.3g} Hz lowered to {1 / self.ticker.interval_s:.2g} Hz "
                f"since {time.strftime('%H:%M:%S', time.localtime(self.since))} to keep within its CPU "
                f"budget ({self.ticker.cpu_budget_pct:g} % of a core): {tick['backends']:,} backends"]
