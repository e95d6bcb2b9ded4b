"""The lines of ``contend watch``'s view, and the screen that draws them only when they changed."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from contend.sample.watchview import Lines, Queues, Screen, parents, render


def backend(pid: int, state: str, blocked_by: tuple[int, ...] = (), query: str = "SELECT 1",
            xact: float | None = 3.0) -> dict[str, Any]:
    waits = bool(blocked_by)
    return {"pid": pid, "state": state, "xact_age": xact, "state_age": xact, "app": "web", "query": query,
            "comment": None, "blocked_by": list(blocked_by), "wait_event_type": "Lock" if waits else None,
            "wait_event": "transactionid" if waits else None}


def snapshot(waiter_query: str = "UPDATE job SET progress = 3 WHERE id = 7",
             age: float = 3.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A holder idle in a transaction, two waiters queued behind it, one idle backend."""
    holder = backend(11, "idle in transaction", query="UPDATE job SET progress = 1 WHERE id = 7", xact=age)
    backends = [holder,
                backend(12, "active", (11,), "UPDATE job SET progress = 2 WHERE id = 7 -- and a comment "
                        "long enough to wrap", age - 1),
                backend(13, "active", (11, 12), waiter_query, age - 2),
                backend(14, "idle", query="COMMIT", xact=None)]
    tick = {"t": 0.0, "backends": 4, "blocked": 2, "edges": 3, "depth": 2,
            "roots": [{"pid": 11, "blocks": 2}], "idle_in_tx": 1, "idle_in_tx_max_age": age, "cost_ms": 1.0,
            "blocking_calls": 2, "locked_relations": ["job"]}
    return tick, backends


def text(view: Lines, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(view)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())  # type: ignore[attr-defined]


def test_the_view_reads_as_a_tree_and_a_table_and_wraps_under_its_guides() -> None:
    # The guides and borders of rich's Tree and Table (HEAVY_HEAD), drawn as plain lines: a line
    # too wide wraps under the guides that continue it; a table row is cut at the terminal's edge.
    assert text(render(*snapshot()), 60) == """\
00:00:00  backends 4  blocked 2  edges 3  depth 2  roots 1
idle in tx 1 (oldest 3.0 s)  sampler 1.0 ms, 2
pg_blocking_pids calls
blocker forest
└── pid 11 idle in transaction  xact 3.0 s  web  blocks 2
    UPDATE job SET progress = 1 WHERE id = 7
    └── pid 12 active  xact 2.0 s  web  waits on
        Lock:transactionid
        UPDATE job SET progress = 2 WHERE id = 7 -- and a
        comment long enough to wrap
        └── pid 13 active  xact 1.0 s  web  waits on
            Lock:transactionid
            UPDATE job SET progress = 3 WHERE id = 7
root blockers hold locks on: job
idle in transaction
┏━━━━━┳━━━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━
┃ pid ┃ xact age ┃ idle for ┃ application ┃ last query
┡━━━━━╇━━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━
│ 11  │ 3.0 s    │ 3.0 s    │ web         │ UPDATE job SET p
└─────┴──────────┴──────────┴─────────────┴─────────────────"""
    wide = text(render(*snapshot()), 200).splitlines()
    assert "    └── pid 12 active  xact 2.0 s  web  waits on Lock:transactionid" in wide
    assert "│ 11  │ 3.0 s    │ 3.0 s    │ web         │ UPDATE job SET progress = 1 WHERE id = 7 │" in wide


def test_an_unchanged_snapshot_draws_nothing_until_a_second_went_by() -> None:
    now = [100.0]
    screen = Screen(0.1, clock=lambda: now[0])
    first = screen.frame(*snapshot(), [], None, None, 50)
    assert first is not None and "pid 13 active  xact 1.0 s" in text(first, 200)
    now[0] += 0.1  # only the ages moved: the drawing on the screen stays
    assert screen.frame(*snapshot(age=3.1), [], None, None, 50) is None
    now[0] += 0.1  # a waiter's query changed: drawn at once, with it
    changed = screen.frame(*snapshot("DELETE FROM job WHERE id = 7", age=3.2), [], None, None, 50)
    assert changed is not None and "DELETE FROM job WHERE id = 7" in text(changed, 200)
    assert screen.frame(*snapshot("DELETE FROM job WHERE id = 7", age=3.3), ["over budget"], None, None,
                        50) is not None  # a warning is part of what it shows
    now[0] += 0.1
    assert screen.frame(*snapshot("DELETE FROM job WHERE id = 7", age=3.4), ["over budget"], None, None,
                        40) is not None  # so is the terminal's height
    deleted = "DELETE FROM job WHERE id = 7"
    now[0] += 0.6
    assert screen.frame(*snapshot(deleted, age=4.0), ["over budget"], None, None, 40) is None
    now[0] += 0.36  # 0.96 s since it was drawn: within half a tick of a second, the clock and ages move
    again = screen.frame(*snapshot(deleted, age=4.36), ["over budget"], None, None, 40)
    assert again is not None and "pid 11 idle in transaction  xact 4.4 s" in text(again, 200)


def test_at_a_one_second_interval_every_tick_is_drawn() -> None:
    now = [100.0]
    screen = Screen(1.0, clock=lambda: now[0])
    assert screen.frame(*snapshot(), [], None, None, 50) is not None
    now[0] += 0.98  # the next tick, a little early: its clock and ages are drawn all the same
    assert screen.frame(*snapshot(age=3.98), [], None, None, 50) is not None


def test_the_waiters_under_a_backend_are_worked_out_only_for_the_queues_drawn() -> None:
    # 50 queues of 10 row-lock waiters, each waiter blocked by its holder and every waiter ahead.
    blocked_by = {}
    for q in range(50):
        holder, queue = 1000 * (q + 1), [1000 * (q + 1) + k for k in range(1, 11)]
        blocked_by |= {w: [holder, *queue[:k]] for k, w in enumerate(queue)}
    queues = Queues(blocked_by)
    chain, pid = [], 1000
    while under := queues.children(pid):  # the first queue reads as one chain
        [pid] = under
        chain.append(pid)
    assert chain == list(range(1001, 1011))
    assert set(queues.parents) == set(chain)  # no other queue was looked at
    assert parents(blocked_by) == {w: max(b for b in blocked_by[w]) for w in blocked_by}
