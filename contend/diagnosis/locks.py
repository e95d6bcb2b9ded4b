"""Who blocks whom, from one read of ``pg_locks``: the lock-mode conflict table and the wait queues.

Pure, like the forest: it takes lock rows (the waiter's pid, the pid of its lock group's leader,
the lock target, the mode, granted or not, when the wait began) and returns waiter -> blocking pids
as ``pg_blocking_pids()`` would: the holders of a conflicting granted lock on the same target (hard
blockers) and the waiters ahead in that target's queue asking for a conflicting mode (soft
blockers). Postgres keeps the queue's order to itself; it is approximated by ``waitstart``, so two
waits that began in the same microsecond block neither one another, and a wait whose ``waitstart``
is not yet set counts as last in its queue. What differs from ``pg_blocking_pids()`` is in
docs/metrics.md ("Lock waits from pg_locks").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

_MODES = ("AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
          "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")
# The table "Conflicting Lock Modes" of the Postgres documentation (explicit locking): the modes
# each mode conflicts with, as indexes into _MODES.
_CONFLICTS = {
    "AccessShareLock": {7},
    "RowShareLock": {6, 7},
    "RowExclusiveLock": {4, 5, 6, 7},
    "ShareUpdateExclusiveLock": {3, 4, 5, 6, 7},
    "ShareLock": {2, 3, 5, 6, 7},
    "ShareRowExclusiveLock": {2, 3, 4, 5, 6, 7},
    "ExclusiveLock": {1, 2, 3, 4, 5, 6, 7},
    "AccessExclusiveLock": {0, 1, 2, 3, 4, 5, 6, 7},
}
CONFLICTS = {mode: frozenset(_MODES[i] for i in others) for mode, others in _CONFLICTS.items()}
"""Mode -> the modes it conflicts with (symmetric); a mode not in the table (SIReadLock) conflicts
with none."""


class Lock(NamedTuple):
    """One row of ``pg_locks`` (a session's lock on a target, granted or awaited)."""

    pid: int
    group: int
    """The lock group's leader (``pg_stat_activity.leader_pid`` of a parallel worker), else ``pid``."""
    target: str
    """The locked object: locktype and its identifying columns, as one text."""
    mode: str
    granted: bool
    waitstart: float | None = None


def conflicts(a: str, b: str) -> bool:
    """Whether lock modes ``a`` and ``b`` conflict."""
    return b in CONFLICTS.get(a, frozenset())


def blockers_from_locks(locks: Iterable[Lock]) -> dict[int, list[int]]:
    """Return waiting pid -> the pids that block it (their groups' leaders, sorted, without its own)."""
    queues: dict[str, list[Lock]] = {}
    for lock in locks:
        queues.setdefault(lock.target, []).append(lock)
    found: dict[int, set[int]] = {}
    for queue in queues.values():
        held = [(lock.group, lock.mode) for lock in queue if lock.granted]
        waiting = sorted(((_queued_at(lock), lock.group, lock.mode, lock.pid) for lock in queue
                          if not lock.granted), key=lambda w: w[0])
        for i, (at, group, mode, pid) in enumerate(waiting):
            against = CONFLICTS.get(mode, frozenset())
            pids = found.setdefault(pid, set())
            pids.update(g for g, m in held if m in against and g != group)
            pids.update(g for a, g, m, _ in waiting[:i] if a < at and m in against and g != group)
    return {pid: sorted(pids) for pid, pids in found.items() if pids}


def _queued_at(lock: Lock) -> float:
    return math.inf if lock.waitstart is None else lock.waitstart
