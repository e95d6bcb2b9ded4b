"""Per-request records (docs/records.md, ``load/requests-*.jsonl``) and the totals computed from them.

No locust here: the load processes write records through ``contend.jsonl.JsonlWriter``, the
launcher reads them back with ``read_records`` and the analysis with ``contend.jsonl.read_jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contend.jsonl import iter_jsonl
from contend.stats import is_timeout, quantile

FLUSH_EVERY_S = 0.5
"""Records reach the disk at least this often (the contract says at least every second)."""


def request_record(
    *,
    t0: float,
    t1: float,
    kind: str,
    status: int,
    sent: int,
    recv: int,
    error: str | None,
    job: int | None,
    worker: str,
    results: int = 0,
    tasks: int = 0,
    dup_tasks: int = 0,
    dup_results: int = 0,
    wave: int | None = None,
    name: str | None = None,
    method: str | None = None,
) -> dict[str, Any]:
    """Return one record with every key of the contract, in the documented order (``name`` and
    ``method`` only for a request of your own load: a locustfile's, or a command's)."""
    rec: dict[str, Any] = {
        "t0": round(t0, 6), "t1": round(t1, 6), "kind": kind, "status": status, "sent": sent,
        "recv": recv, "error": error, "job": job, "results": results, "tasks": tasks,
        "dup_tasks": dup_tasks, "dup_results": dup_results, "worker": worker, "wave": wave,
    }
    if name is not None:
        rec |= {"name": name, "method": method}
    return rec


def read_records(load_dir: Path) -> Iterator[dict[str, Any]]:
    """Yield every complete record of ``load_dir/requests-*.jsonl`` (a torn last line is skipped)."""
    for path in sorted(load_dir.glob("requests-*.jsonl")):
        yield from iter_jsonl(path)


@dataclass(frozen=True)
class KindTotals:
    """Totals of one request kind; the latencies are of every request, failed ones included."""

    ok: int
    failed: int
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    max_s: float | None
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadSummary:
    """What a load run did, computed from its records."""

    kinds: dict[str, KindTotals]
    results_posted: int
    """Result entries in POSTs that got a 2xx."""
    tasks_received: int
    dup_tasks: int
    dup_results: int
    timeouts: int
    first_t0: float | None
    last_t1: float | None
    status: str = "ok"
    """ok, or partial when the run was stopped before its plan was done."""

    @property
    def requests_ok(self) -> int:
        return sum(k.ok for k in self.kinds.values())

    @property
    def requests_failed(self) -> int:
        return sum(k.failed for k in self.kinds.values())

    @property
    def elapsed_s(self) -> float:
        if self.first_t0 is None or self.last_t1 is None:
            return 0.0
        return self.last_t1 - self.first_t0

    @property
    def results_per_s(self) -> float:
        return self.results_posted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]], status: str = "ok") -> LoadSummary:
        durations: dict[str, list[float]] = {}
        failed: dict[str, int] = {}
        errors: dict[str, dict[str, int]] = {}
        results = tasks = dup_tasks = dup_results = timeouts = 0
        first: float | None = None
        last: float | None = None
        for r in records:
            kind = r.get("kind") or "request"  # a command's own records may leave out what is not HTTP
            durations.setdefault(kind, [])
            failed.setdefault(kind, 0)
            errors.setdefault(kind, {})
            # Latency counts every request of the kind, failed ones with the time they took (a
            # timed-out POST with its timeout): the definition of summary.json's latency_p*_s.
            durations[kind].append(r["t1"] - r["t0"])
            if r.get("error") is None:
                results += r.get("results") or 0
            else:
                failed[kind] += 1
                errors[kind][r["error"]] = errors[kind].get(r["error"], 0) + 1
                timeouts += is_timeout(r["error"])
            tasks += r.get("tasks") or 0
            dup_tasks += r.get("dup_tasks") or 0
            dup_results += r.get("dup_results") or 0
            first = r["t0"] if first is None else min(first, r["t0"])
            last = r["t1"] if last is None else max(last, r["t1"])
        kinds = {}
        for kind, values in sorted(durations.items()):
            values.sort()
            kinds[kind] = KindTotals(
                ok=len(values) - failed[kind], failed=failed[kind], p50_s=quantile(values, 0.5),
                p95_s=quantile(values, 0.95), p99_s=quantile(values, 0.99),
                max_s=values[-1] if values else None, errors=errors[kind],
            )
        return cls(kinds, results, tasks, dup_tasks, dup_results, timeouts, first, last, status)
