"""The wait-for graph of one Postgres snapshot: edges, blocked, depth and the roots of the forest.

Pure: it takes backend rows (mappings with ``pid``, ``blocked_by`` and ``wait_event_type``) and does
no I/O, so the runbook's numbers can be checked by hand against it (see docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Forest:
    """The blocker forest of one snapshot."""

    edges: int
    """(blocked, blocking) pairs, the runbook's ``blocker_chain``."""
    blocked: int
    """Backends waiting on a heavyweight lock (``wait_event_type = 'Lock'``)."""
    depth: int
    """Edges on the longest path of the wait-for graph (0 when nobody waits)."""
    roots: dict[int, int]
    """Blockers that are not blocked themselves -> how many backends they block transitively."""
    waiters: dict[int, list[int]] = field(default_factory=dict)
    """Blocking pid -> the pids it blocks directly (sorted), for drawing the tree."""


def blocked_by_map(rows: Iterable[Mapping[str, Any]]) -> dict[int, list[int]]:
    """Return pid -> distinct blocking pids, dropping pid 0 (a prepared transaction has no backend)."""
    found: dict[int, list[int]] = {}
    for row in rows:
        pids = set(row.get("blocked_by") or ())
        pids.discard(0)
        if pids:
            found[row["pid"]] = sorted(pids)
    return found


def build_forest(rows: Iterable[Mapping[str, Any]]) -> Forest:
    """Return the blocker forest of backend rows (``pid``, ``blocked_by``, ``wait_event_type``)."""
    rows = list(rows)
    blocked_by = blocked_by_map(rows)
    waiters: dict[int, list[int]] = {}
    for pid, blockers in blocked_by.items():
        for blocker in blockers:
            waiters.setdefault(blocker, []).append(pid)
    for pids in waiters.values():
        pids.sort()
    roots = {
        pid: len(_reachable(pid, waiters)) for pid in sorted(waiters) if pid not in blocked_by
    }
    return Forest(
        edges=sum(len(b) for b in blocked_by.values()),
        blocked=sum(1 for row in rows if row.get("wait_event_type") == "Lock"),
        depth=_longest_path(blocked_by),
        roots=roots,
        waiters=waiters,
    )


def _reachable(start: int, waiters: Mapping[int, list[int]]) -> set[int]:
    """Return every pid that waits, directly or not, on ``start`` (``start`` excluded)."""
    seen: set[int] = set()
    frontier = set(waiters.get(start, ()))
    while frontier:
        seen |= frontier
        frontier = set().union(*(waiters.get(pid, ()) for pid in frontier)) - seen
    seen.discard(start)
    return seen


class _Cycle(Exception):
    pass


def _longest_path(blocked_by: Mapping[int, list[int]]) -> int:
    """Return the edge count of the longest path, following blocked -> blocking edges.

    Per-edge work stays in C (set and map operations): a queue of 50 waiters on one row has 1,226
    edges, and this runs at every tick. A deadlock is a cycle, and exists for up to
    ``deadlock_timeout``: then the slower walk of ``_longest_simple_path`` takes over.
    """
    level: dict[int, int] = {}
    on_path: set[int] = set()

    def walk(pid: int) -> None:
        blockers = blocked_by.get(pid)
        if not blockers:
            level[pid] = 0
            return
        if not on_path.isdisjoint(blockers):
            raise _Cycle
        on_path.add(pid)
        for blocker in [b for b in blockers if b not in level]:
            walk(blocker)
        on_path.discard(pid)
        level[pid] = 1 + max(map(level.__getitem__, blockers))

    try:
        for pid in blocked_by:
            if pid not in level:
                walk(pid)
    except _Cycle:
        return _longest_simple_path(blocked_by)
    return max(level.values(), default=0)


def _longest_simple_path(blocked_by: Mapping[int, list[int]]) -> int:
    """Return the longest path when the graph has a cycle: an edge back onto the path being walked
    is ignored, so a cycle counts as the longest simple path through it."""
    memo: dict[int, int] = {}
    on_path: set[int] = set()

    def longest_from(pid: int) -> tuple[int, bool]:
        """Return (longest path from pid, whether no cycle was cut below it)."""
        if pid in memo:
            return memo[pid], True
        on_path.add(pid)
        best, clean = 0, True
        for blocker in blocked_by.get(pid, ()):
            if blocker in on_path:
                clean = False
                continue
            length, below_clean = longest_from(blocker)
            best, clean = max(best, 1 + length), clean and below_clean
        on_path.discard(pid)
        if clean:  # a result that depends on where a cycle was cut is not reused
            memo[pid] = best
        return best, clean

    return max((longest_from(pid)[0] for pid in blocked_by), default=0)
