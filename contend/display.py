"""The live terminal view of `contend run`: variant i of n, phase, how far it is, time left, locks now.

Rendering is pure (``progress_line``, ``time_left``, ``bar``); ``RunDisplay`` is the thin rich
``Live`` around them. How far the load is: POSTs done of the planned total when the workload runs
in rounds, seconds of its planned length otherwise; in the drain, the results still queued in NATS.
Each finding of the wait-for graph is printed when it first appears ("5.0 s cross-layer deadlock:
job_result <-> _cachalot, seen 1x"); the panel keeps them with how often each has been seen since,
and the variant's last line repeats them so.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from contend.live import LiveFinding
from contend.load import LoadProgress
from contend.load.config import BatchedPost, Locustfile
from contend.sample.nats import RESULTS_STREAM


@dataclass(frozen=True)
class Planned:
    """What one variant's load is planned to do."""

    posts: int | None
    """POSTs of the workloads that run in rounds (rounds x concurrency); None when none does."""
    load_s: float | None
    """Seconds of the workloads that run for a duration (the longest); None when none does."""
    iterations: int | None = None
    """Task runs of a locustfile's users (users x iterations); None without one that counts them."""


def planned(workloads: Iterable[Any]) -> Planned:
    """Return the planned POSTs, task runs and load seconds of a variant's workloads."""
    posts, seconds, iterations = 0, 0.0, 0
    for w in workloads:
        if isinstance(w, BatchedPost) and w.rounds is not None:
            posts += w.rounds * w.concurrency
        elif isinstance(w, Locustfile) and w.iterations is not None:
            iterations += w.users * w.iterations
        elif (duration := getattr(w, "duration_s", None)) is not None:
            seconds = max(seconds, float(duration))
    return Planned(posts or None, seconds or None, iterations or None)


def load_fraction(plan: Planned | None, progress: LoadProgress | None) -> float | None:
    """Return how much of the planned load is done (0..1), None when it cannot be told."""
    if plan is None or progress is None:
        return None
    if plan.posts:
        return min(1.0, (progress.requests_ok + progress.requests_failed) / plan.posts)
    if plan.iterations:
        return min(1.0, progress.iterations / plan.iterations)
    if plan.load_s:
        return min(1.0, progress.elapsed_s / plan.load_s)
    return None


def bar(fraction: float, width: int = 24) -> str:
    """Return a text progress bar: ``"██████░░░░░░"``."""
    full = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * full + "░" * (width - full)


def time_left(finished_s: list[float], index: int, total: int, variant_elapsed_s: float,
              fraction: float | None, load_started_s: float | None) -> float | None:
    """Return the seconds the run still needs, None while nothing allows a guess.

    After a variant has finished, every variant is taken to last as long as the finished ones did
    on average. Before that, the current variant's length is extrapolated from its load's progress
    (time before the load + load time / fraction done), and the others are taken to last as long.
    """
    remaining = total - index
    if finished_s:
        mean = statistics.fmean(finished_s)
        return max(0.0, mean - variant_elapsed_s) + mean * remaining
    if fraction and fraction > 0.05 and load_started_s is not None:
        load_s = (variant_elapsed_s - load_started_s) / fraction
        variant_s = load_started_s + load_s
        return max(0.0, variant_s - variant_elapsed_s) + variant_s * remaining
    return None


def progress_line(plan: Planned | None, progress: LoadProgress | None) -> str:
    """Return ``"POSTs 12 of 20 ██████░░ 60 %"`` (or seconds of a timed load), empty when unknown."""
    fraction = load_fraction(plan, progress)
    if fraction is None or plan is None or progress is None:
        return ""
    if plan.posts:
        done = f"POSTs {progress.requests_ok + progress.requests_failed} of {plan.posts}"
    elif plan.iterations:
        done = f"task runs {progress.iterations} of {plan.iterations}"
    else:
        done = f"load {progress.elapsed_s:.0f} s of {plan.load_s:.0f} s"
    return f"{done} {bar(fraction)} {fraction:4.0%}"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s" if seconds >= 60 else f"{seconds:.0f} s"


def _tail(path: Path, size: int = 16384) -> list[bytes]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read().splitlines()
    except OSError:
        return []


def last_tick(samples_dir: Path) -> dict[str, Any] | None:
    """Return the newest Postgres sampler tick of a variant, reading only the end of the file."""
    for line in reversed(_tail(samples_dir / "pg_ticks.jsonl", 8192)):
        try:
            tick: dict[str, Any] = json.loads(line)
            return tick
        except ValueError:
            continue
    return None


def results_queued(samples_dir: Path) -> int | None:
    """Return the results waiting in NATS at the newest NATS sample, None without one."""
    records = []
    for line in _tail(samples_dir / "nats.jsonl"):
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    results = [r for r in records if r.get("stream") == RESULTS_STREAM]
    if not results:
        return None
    newest = max(r["t"] for r in results)
    return max(int(r.get("num_pending") or 0) for r in results if r["t"] == newest)


FINDINGS_SHOWN = 5
"""Findings the live panel lists (the first ones found; each is printed once as it appears)."""


class RunDisplay:
    """A rich Live panel on stderr; on a non-terminal it prints one line per event instead.

    ``plans`` maps a variant name to its ``Planned`` load (``planned(variant.workloads)``), for the bar.
    """

    def __init__(self, console: Console | None = None, plans: Mapping[str, Planned] | None = None) -> None:
        self.console = console or Console(stderr=True)
        # Live renders this object 4 times a second (``__rich__``): the clock, the time left and the
        # drain's queue move between events.
        self.live = Live(self, console=self.console, refresh_per_second=4, transient=False)
        self.plans = dict(plans or {})
        self.variant = ""
        self.index = 0
        self.total = 0
        self.phase_text = ""
        self.started = time.monotonic()
        self.variant_started_at = self.started
        self.load_started_s: float | None = None
        self.finished_s: list[float] = []
        self.progress: LoadProgress | None = None
        self.tick: dict[str, Any] | None = None
        self.queued: int | None = None
        self.samples_dir: Path | None = None
        self.found: list[str] = []

    def __rich__(self) -> Table:
        if self.phase_text == "drain" and self.samples_dir is not None:
            self.queued = results_queued(self.samples_dir)
        return self._table()

    def _plan(self) -> Planned | None:
        return self.plans.get(self.variant.split("~r")[0])

    def _table(self) -> Table:
        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        elapsed, in_variant = now - self.started, now - self.variant_started_at
        fraction = load_fraction(self._plan(), self.progress) if self.load_started_s is not None else None
        left = time_left(self.finished_s, self.index, self.total, in_variant, fraction, self.load_started_s)
        eta = f"about {_minutes(left)} left" if left is not None else "time left: after the first load"
        table.add_row(f"[bold]variant {self.index} of {self.total}[/] {self.variant}",
                      f"{self.phase_text}", f"{elapsed:6.1f} s, {eta}")
        line = progress_line(self._plan(), self.progress)
        if self.queued is not None and self.load_started_s is not None:
            line += f"  results queued {self.queued}"
        if line:
            table.add_row(line, "", "")
        if self.progress is not None:
            p = self.progress
            p95 = f"{p.p95_s:.2f} s" if p.p95_s is not None else "-"
            table.add_row(f"requests ok {p.requests_ok} failed {p.requests_failed}",
                          f"in flight {p.in_flight}", f"p95 {p95}")
        if self.tick is not None:
            table.add_row(f"blocked backends {self.tick.get('blocked', 0)}",
                          f"edges {self.tick.get('edges', 0)}",
                          f"idle in tx {self.tick.get('idle_in_tx', 0)}")
        for line in self.found[:FINDINGS_SHOWN]:
            table.add_row(f"[red]{escape(line)}[/]", "", "")
        return table

    def _say(self, text: str) -> None:
        if not self.console.is_terminal:
            self.console.print(text, highlight=False)
        self.live.refresh()

    def variant_started(self, index: int, total: int, name: str) -> None:
        self.index, self.total, self.variant = index, total, name
        self.progress, self.tick, self.queued, self.load_started_s = None, None, None, None
        self.found = []
        self.variant_started_at = time.monotonic()
        self._say(f"variant {index}/{total}: {name}")

    def phase(self, text: str) -> None:
        self.phase_text = text
        if text == "load" and self.load_started_s is None:
            self.load_started_s = time.monotonic() - self.variant_started_at
        if self.samples_dir is not None:
            self.queued = results_queued(self.samples_dir)
        self._say(f"  {text}")

    def load_progress(self, progress: LoadProgress, samples_dir: Path) -> None:
        self.progress = progress
        self.samples_dir = samples_dir
        self.tick = last_tick(samples_dir)
        self.queued = results_queued(samples_dir)
        self.live.refresh()

    def findings(self, findings: Sequence[LiveFinding], new: Sequence[LiveFinding]) -> None:
        """Keep every finding's line (seen so far) for the panel; print the new ones as they appear."""
        self.found = [f.line() for f in findings]
        for finding in new:
            self.console.print(f"  finding: {finding.line()}", highlight=False, markup=False, soft_wrap=True)
        if new:
            self.live.refresh()

    def variant_finished(self, name: str, status: str, reason: str | None) -> None:
        self.finished_s.append(time.monotonic() - self.variant_started_at)
        line = f"  {name}: {status}" + (f" ({reason})" if reason else "")
        if self.progress is not None:
            line += f", requests ok {self.progress.requests_ok} failed {self.progress.requests_failed}"
        line += f", {self.finished_s[-1]:.0f} s"
        self.console.print(line, highlight=False, markup=False)
        for found in self.found:
            self.console.print(f"    {found}", highlight=False, markup=False, soft_wrap=True)

    def __enter__(self) -> RunDisplay:
        if self.console.is_terminal:
            self.live.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.console.is_terminal:
            self.live.stop()
