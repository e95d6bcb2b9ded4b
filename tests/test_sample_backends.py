"""pg_backends.jsonl by change: the records of every tick rebuilt from the lines written by change
equal the full records the sampler returned, tick by tick, on a scene that changes."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contend.jsonl import JsonlWriter, read_jsonl
from contend.sample.backends import ChangeLog, read_ticks, rebuild
from contend.sample.pg import PgSampler, connect
from tests.conftest import Contention


def test_rebuild_from_hand_made_ticks() -> None:
    def rec(t: float, pid: int, state: str, xact_start: float | None) -> dict[str, Any]:
        now = 1000.0 + t
        age = None if xact_start is None else round(now - xact_start, 6)
        return {"t": t, "pid": pid, "state": state, "xact_start": xact_start, "query_start": None,
                "state_change": None, "xact_age": age, "query_age": None, "state_age": None}

    ticks = [
        (0.0, [rec(0.0, 1, "idle in transaction", 999.5), rec(0.0, 2, "active", 1000.0)]),
        (0.1, [rec(0.1, 1, "idle in transaction", 999.5), rec(0.1, 2, "active", 1000.0)]),
        (0.2, [rec(0.2, 1, "idle in transaction", 999.5)]),                      # 2 is gone
        (0.3, [rec(0.3, 1, "active", 999.5), rec(0.3, 3, "active", 1000.25)]),  # 1 changed, 3 new
        (0.4, []),
        (0.5, [rec(0.5, 3, "active", 1000.25)]),
    ]
    log = ChangeLog(full_every_s=0.25)
    lines = [line for t, backends in ticks for line in log.lines(t, 1000.0 + t, backends)]
    # Unchanged backends have no line between the full snapshots (at 0.0 and 0.3): 2 + 2 + 3's return.
    assert sum(1 for line in lines if "pid" in line) == 5
    assert [line["gone"] for line in lines if "tick" in line] == [[], [], [2], [], [1, 3], []]
    assert list(rebuild(lines)) == ticks


@pytest.mark.integration
def test_ticks_rebuilt_from_records_by_change_equal_the_full_records(sample_dsn: str, tmp_path: Path) -> None:
    full_path, change_path = tmp_path / "full.jsonl", tmp_path / "pg_backends.jsonl"
    returned: list[tuple[float, list[dict[str, Any]]]] = []
    log = ChangeLog(full_every_s=0.5)
    with connect(sample_dsn) as conn, JsonlWriter(full_path) as full, JsonlWriter(change_path) as changed:
        sampler = PgSampler(conn)

        def tick() -> None:
            record, backends = sampler.tick()
            returned.append((record["t"], backends))
            full.write(backends)  # one line per backend per tick, as contend wrote before
            changed.write(log.lines(record["t"], record["server_now"], backends))

        with Contention(sample_dsn, waiters=3):
            for _ in range(6):
                tick()
            with psycopg.connect(sample_dsn) as idle:  # a new holder, idle in its transaction
                idle.execute("SELECT 1")
                for _ in range(6):
                    tick()
        for _ in range(4):  # the queue drained, the holders gone
            tick()
    ticks_with_rows = [(t, rows) for t, rows in returned if rows]
    assert list(read_ticks(full_path)) == ticks_with_rows  # the full format has no line for an empty tick
    assert list(read_ticks(change_path)) == returned
    assert any(b["wait_event_type"] == "Lock" and b["xact_age"] for _, rows in returned for b in rows)
    # Fewer lines: an unchanged waiter is written at full snapshots only.
    n_full = sum(len(rows) for _, rows in returned)
    n_changed = sum(1 for line in read_jsonl(change_path) if "pid" in line)
    assert n_changed < n_full
    gz = tmp_path / "pg_backends.jsonl.gz"
    with change_path.open("rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert list(read_ticks(gz)) == returned  # as the run folder keeps it once the variant ended
