"""``samples/pg_backends.jsonl`` written by change: a backend's line only when it changed, a full
snapshot every few seconds, and the reader that rebuilds every tick's records exactly.

A backend record (``PgSampler.tick``) carries its ages (``xact_age``, ``query_age``, ``state_age``)
and the starts they come from (``xact_start``, ``query_start``, ``state_change``, epoch seconds on
the server's clock), each age being ``round(server_now - start, 6)``. A waiting backend's age grows
every tick while nothing about it changes, so the file keeps the starts and leaves the ages out:

- one tick line per tick, ``{"tick": t, "server_now": ..., "full": false, "gone": [pids]}``, then
- one line per backend that is new or changed since the previous tick (the record without ``t``
  and the ages), and every ``full_every_s`` seconds a full snapshot (``"full": true``, every
  backend's line) from which a reader can start.

``read_ticks`` turns such a file (or one of full records, as contend wrote before) back into the
list of records of every tick, equal to the ones the sampler returned (docs/records.md).
"""

from __future__ import annotations

import gzip
import json
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from contend.jsonl import iter_jsonl

AGES = {"xact_age": "xact_start", "query_age": "query_start", "state_age": "state_change"}
FULL_EVERY_S = 5.0


def age(server_now: float, start: float | None) -> float | None:
    """The age of a start at ``server_now`` as every backend record carries it (microseconds)."""
    return None if start is None else round(server_now - start, 6)


class ChangeLog:
    """Turns each tick's backend records into the lines to append (``lines``)."""

    def __init__(self, full_every_s: float = FULL_EVERY_S) -> None:
        self.full_every_s = full_every_s
        self._last: dict[int, tuple[Any, ...]] = {}
        self._getters: dict[tuple[str, ...], Callable[[dict[str, Any]], Any]] = {}
        self._full_at: float | None = None

    def lines(self, t: float, server_now: float, backends: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Return the tick line and the lines of the backends that are new or changed since the last tick."""
        full = self._full_at is None or t - self._full_at >= self.full_every_s
        if full:
            self._full_at = t
        current = {b["pid"]: (b, self._values(b)) for b in backends}
        gone = sorted(set(self._last) - set(current))
        changed = [_stored(b) for pid, (b, values) in current.items()
                   if full or self._last.get(pid) != values]
        self._last = {pid: values for pid, (_, values) in current.items()}
        return [{"tick": t, "server_now": server_now, "full": full, "gone": gone}, *changed]

    def _values(self, backend: dict[str, Any]) -> tuple[Any, ...]:
        """The stored values of a record (all but ``t`` and the ages), compared from tick to tick."""
        keys = tuple(backend)
        if (getter := self._getters.get(keys)) is None:
            getter = self._getters[keys] = operator.itemgetter(*_stored(backend))
        values = getter(backend)
        return values if isinstance(values, tuple) else (values,)  # one key: itemgetter gives the value


def _stored(backend: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in backend.items() if k != "t" and k not in AGES}


def rebuild(lines: Iterable[dict[str, Any]]) -> Iterator[tuple[float, list[dict[str, Any]]]]:
    """Yield ``(t, backend records)`` per tick from the lines of a pg_backends file, either format.

    A file written by change that starts without a full snapshot (cut at its head) yields from
    its first full snapshot on.
    """
    state: dict[int, dict[str, Any]] | None = None
    tick: dict[str, Any] | None = None
    legacy_t: float | None = None
    legacy: list[dict[str, Any]] = []
    for line in lines:
        if "tick" in line:
            if tick is not None and state is not None:
                yield _records(tick, state)
            tick = line
            if line["full"]:
                state = {}
            elif state is not None:
                for pid in line["gone"]:
                    state.pop(pid, None)
        elif tick is not None:
            if state is not None:
                state[line["pid"]] = line
        else:  # one full record per backend per tick (before records by change)
            if legacy and line["t"] != legacy_t:
                yield float(legacy_t or 0.0), legacy
                legacy = []
            legacy_t = line["t"]
            legacy.append(line)
    if tick is not None and state is not None:
        yield _records(tick, state)
    if legacy:
        yield float(legacy_t or 0.0), legacy


def _records(tick: dict[str, Any], state: dict[int, dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    t, now = tick["tick"], tick["server_now"]
    return t, [{"t": t, **stored, **{a: age(now, stored.get(start)) for a, start in AGES.items()}}
               for _, stored in sorted(state.items())]


def read_ticks(path: Path) -> Iterator[tuple[float, list[dict[str, Any]]]]:
    """Yield ``(t, backend records)`` for every tick of a ``pg_backends.jsonl`` file (or its ``.gz``)."""
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            yield from rebuild(json.loads(line) for line in fh if line.strip())
    else:
        yield from rebuild(iter_jsonl(path))
