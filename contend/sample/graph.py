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
        pids = sorted({int(p) for p in row.get("blocked_by") or () if int(p) != 0})
        if pids:
            found[int(row["pid"])] = pids
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
    todo = list(waiters.get(start, ()))
    while todo:
        pid = todo.pop()
        if pid not in seen and pid != start:
            seen.add(pid)
            todo.extend(waiters.get(pid, ()))
    return seen


def _longest_path(blocked_by: Mapping[int, list[int]]) -> int:
    """Return the edge count of the longest path, following blocked -> blocking edges.

    A deadlock is a cycle, and exists for up to ``deadlock_timeout``: an edge back onto the path
    being walked is ignored, so a cycle counts as the longest simple path through it.
    """
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

    # Chains are bounded by max_connections, far below Python's recursion limit at usual settings.
    return max((longest_from(pid)[0] for pid in blocked_by), default=0)
