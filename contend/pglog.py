"""What Postgres itself reported: the events of an embedded server's log, parsed.

The embedded server logs with ``log_line_prefix = '%m [%p] [%a] '`` in UTC (contend/stack/postgres.py),
``log_lock_waits = on`` (one line when a lock wait passes ``deadlock_timeout``, one when it ends) and
every ERROR and FATAL. This module turns those lines into events, one source independent of the
samplers; the samplers' own errors (application ``contend-sampler``, e.g. a tick cancelled by its
statement timeout) are left out (docs/metrics.md, "What Postgres itself reports"). Pure: no I/O
but reading one file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# "2026-11-30 10:20:01.123 UTC [12345] [app] LOG:  process 12345 still waiting for ..." (app optional)
_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (?P<tz>[A-Z]+|[+-]\d+) \[(?P<pid>\d+)\] "
    r"(?:\[(?P<app>.*?)\] )?(?P<level>[A-Z]+\d?):\s+(?P<message>.*)$"
)
OWN_APPLICATION = "contend-sampler"
_STILL_WAITING = re.compile(
    r"^process (?P<pid>\d+) still waiting for (?P<mode>\w+) on (?P<object>.+?) after (?P<ms>[\d.]+) ms"
)
_ACQUIRED = re.compile(
    r"^process (?P<pid>\d+) acquired (?P<mode>\w+) on (?P<object>.+?) after (?P<ms>[\d.]+) ms"
)
# Errors worth a count of their own: message start -> kind.
ERRORS = {
    "deadlock detected": "deadlock",
    "canceling statement due to statement timeout": "statement_timeout",
    "canceling statement due to lock timeout": "lock_timeout",
    "sorry, too many clients already": "too_many_clients",
    "terminating connection due to idle-in-transaction timeout": "idle_in_tx_timeout",
}
EVENT_KINDS = ("lock_wait", *ERRORS.values())


@dataclass(frozen=True)
class LockWait:
    """A lock wait Postgres logged: it passed ``deadlock_timeout`` at ``logged``; ``end`` when acquired."""

    pid: int
    start: float
    logged: float
    end: float | None
    mode: str
    object: str


@dataclass(frozen=True)
class ServerEvent:
    """One counted server message: ``kind`` is one of EVENT_KINDS."""

    t: float
    pid: int
    kind: str
    message: str


@dataclass(frozen=True)
class ServerLog:
    waits: list[LockWait]
    events: list[ServerEvent]

    def counts(self) -> dict[str, int]:
        """Events per kind (every kind present, 0 when none); ``lock_wait`` counts logged waits."""
        counts = dict.fromkeys(EVENT_KINDS, 0)
        for event in self.events:
            counts[event.kind] += 1
        return counts


def _epoch(ts: str, tz: str) -> float | None:
    if tz not in ("UTC", "GMT", "+00", "+0000"):
        return None  # only the embedded server's UTC prefix is trusted
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in ts else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(ts + "+0000", fmt + "%z").timestamp()


def parse_lines(lines: Iterable[str]) -> ServerLog:
    """Parse server log lines; lines of other formats (continuations, startup noise) are skipped."""
    open_waits: dict[tuple[int, str, str], tuple[float, float]] = {}
    waits: list[LockWait] = []
    events: list[ServerEvent] = []
    for line in lines:
        match = _LINE.match(line.rstrip("\n"))
        if match is None:
            continue
        t = _epoch(match["ts"], match["tz"])
        if t is None:
            continue
        pid, level, message = int(match["pid"]), match["level"], match["message"]
        if level == "LOG":
            if wait := _STILL_WAITING.match(message):
                key = (int(wait["pid"]), wait["mode"], wait["object"])
                open_waits[key] = (t - float(wait["ms"]) / 1000.0, t)
                events.append(ServerEvent(t, pid, "lock_wait", message))
            elif done := _ACQUIRED.match(message):
                key = (int(done["pid"]), done["mode"], done["object"])
                if key in open_waits:
                    _, logged = open_waits.pop(key)
                    waits.append(LockWait(key[0], t - float(done["ms"]) / 1000.0, logged, t, key[1], key[2]))
        elif level in ("ERROR", "FATAL") and match["app"] != OWN_APPLICATION:
            for prefix, kind in ERRORS.items():
                if message.startswith(prefix):
                    events.append(ServerEvent(t, pid, kind, message))
                    break
    # A wait never acquired (cancelled, its transaction aborted, or the server stopped) has no end.
    waits += [LockWait(k[0], start, logged, None, k[1], k[2]) for k, (start, logged) in open_waits.items()]
    waits.sort(key=lambda w: w.start)
    return ServerLog(waits, events)


def read_server_log(path: Path) -> ServerLog | None:
    """Parse a server log file; None when there is none (an external server's log is not ours)."""
    if not path.exists():
        return None
    with path.open(encoding="utf-8", errors="replace") as fh:
        return parse_lines(fh)
