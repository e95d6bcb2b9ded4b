"""What observing costs: CPU seconds of processes, read from ``/proc`` through psutil.

The samplers' cost is counted the same way as the server's: user plus system time of a process,
plus the time of the children it has reaped (the py-spy dumps of the sampler process, the
connection backends of the postmaster), plus its live descendants when asked for a tree. A
Postgres backend is a process of its own, so the sampler's share of the database is the CPU time
of its backend (``pg_backend_pid()``), when the server runs on this machine.
"""

from __future__ import annotations

from collections.abc import Iterable

import psutil


def process_cpu(pid: int) -> float:
    """Return the CPU seconds of ``pid`` and of the children it has reaped; 0 when it is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system + t.children_user + t.children_system)


def tree_cpu(pids: Iterable[int], exclude: Iterable[int] = ()) -> float:
    """Return the CPU seconds of these processes and their live descendants, each counted once.

    A process in ``exclude`` (say the sampler's own backend under the postmaster) is left out; time
    of children that have already been reaped stays in their parent's figure.
    """
    left_out = set(exclude)
    seen: set[int] = set()
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            if proc.pid in seen or proc.pid in left_out:
                continue
            seen.add(proc.pid)
            total += process_cpu(proc.pid)
    return total

