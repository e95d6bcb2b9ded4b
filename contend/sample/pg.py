"""The Postgres sampler: one snapshot of pg_stat_activity per tick, blocker graph built client-side.

A polite observer (field-notes section 8): its own connection in autocommit, named
``contend-sampler``, short ``statement_timeout`` and ``lock_timeout``, its own backend excluded, and
``pg_blocking_pids()`` called only for backends that wait on a heavyweight lock, because each call
takes every lock-manager partition lock. A query that fails for lack of privileges is reported once
and then skipped. The SQL of every metric is in docs/metrics.md.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from contend.diagnosis import sqlcomment
from contend.diagnosis.forest import build_forest
from contend.errors import SamplerError
from contend.redact import redact_message

log = logging.getLogger(__name__)

APPLICATION_NAME = "contend-sampler"
STATEMENT_TIMEOUT_MS = 200
LOCK_TIMEOUT_MS = 50
QUERY_CHARS = 500
LOCKED_RELATIONS_MAX_AGE_S = 1.0

# One read of pg_stat_activity; pg_blocking_pids() only in the CASE branch of Lock waiters
# (CASE evaluates its branches lazily, and the function is volatile so it is never pre-computed).
# The exact start of each lock wait (pg_locks.waitstart, Postgres 14+) comes from a materialized CTE
# that is read only from that same branch: a CTE is evaluated when first read, so pg_locks (which,
# like pg_blocking_pids, takes every lock-manager partition lock) is read once per tick, and only
# on ticks that have a waiter.
# Cost follows what happens, not how many backends exist: a backend that is idle (not in a
# transaction), waits on no lock and blocks no one is counted in SQL (per wait event) and not
# returned row by row; a server with a thousand pooled connections returns the few that matter. The
# one-row summary is joined to the rows so that a snapshot with nothing to show still returns it.
WAITS_CTE = """
WITH waits AS MATERIALIZED (
  SELECT pid, EXTRACT(EPOCH FROM min(waitstart))::float8 AS waitstart
    FROM pg_locks WHERE NOT granted AND waitstart IS NOT NULL GROUP BY pid
),"""
ACTIVITY_SELECT = """
act AS MATERIALIZED (
SELECT pid, application_name AS app, host(client_addr) AS client_addr, client_port, backend_type,
       state, wait_event_type, wait_event,
       EXTRACT(EPOCH FROM now() - xact_start)::float8 AS xact_age,
       EXTRACT(EPOCH FROM now() - query_start)::float8 AS query_age,
       EXTRACT(EPOCH FROM now() - state_change)::float8 AS state_age,
       backend_xid IS NOT NULL AS has_xid,
       left(query, %(chars)s) AS query,
       substring(query from '/\\*[^*]*=''[^*]*\\*/') AS query_comment,
       CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END AS blocked_by,
       CASE WHEN wait_event_type = 'Lock' THEN {waitstart} END AS waitstart,
       EXTRACT(EPOCH FROM now())::float8 AS server_now
  FROM pg_stat_activity a
 WHERE datname = current_database() AND pid <> pg_backend_pid()
), blockers AS MATERIALIZED (
  SELECT DISTINCT unnest(blocked_by) AS pid FROM act WHERE blocked_by IS NOT NULL
), shown AS (
  SELECT * FROM act
   WHERE state IS DISTINCT FROM 'idle' OR wait_event_type = 'Lock' OR pid IN (SELECT pid FROM blockers)
), hidden AS (
  SELECT (SELECT count(*) FROM act WHERE backend_type = 'client backend'
             AND pid NOT IN (SELECT pid FROM shown)) AS hidden_clients,
         (SELECT coalesce(jsonb_object_agg(event, n), '{{}}')
            FROM (SELECT wait_event_type || ':' || wait_event AS event, count(*) AS n FROM act
                   WHERE wait_event_type IS NOT NULL AND pid NOT IN (SELECT pid FROM shown)
                   GROUP BY 1) e) AS hidden_events
)
SELECT hidden.hidden_clients, hidden.hidden_events, shown.*
  FROM hidden LEFT JOIN shown ON true
"""
ACTIVITY_SQL = WAITS_CTE + ACTIVITY_SELECT.format(
    waitstart="(SELECT w.waitstart FROM waits w WHERE w.pid = a.pid)")
# Before Postgres 14 pg_locks has no waitstart: waits are then not timed.
ACTIVITY_SQL_PRE14 = "WITH " + ACTIVITY_SELECT.format(waitstart="NULL::float8")

# Relations (tables) the root blockers hold granted locks on; read only when there are roots.
LOCKED_RELATIONS_SQL = """
SELECT DISTINCT c.oid::regclass::text AS relation
  FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
 WHERE l.pid = ANY(%(pids)s) AND l.granted AND l.locktype = 'relation'
   AND c.relkind IN ('r', 'p') AND c.relnamespace <> 'pg_catalog'::regnamespace
 ORDER BY 1
"""

PRIVILEGE_SQL = """
SELECT rolsuper OR pg_has_role(current_user, 'pg_monitor', 'USAGE')
    OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
  FROM pg_roles WHERE rolname = current_user
"""

NO_MONITOR_WARNING = (
    "role {role!r} is neither superuser nor member of pg_monitor: sessions of other roles show no "
    "state, wait event or query, so their lock waits, idle transactions and blockers are not counted "
    "(GRANT pg_monitor TO {role})"
)


def connect(dsn: str, connect_timeout: int = 10) -> psycopg.Connection[Any]:
    """Open the sampler's own connection (autocommit, named, short timeouts)."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=connect_timeout,
            application_name=APPLICATION_NAME,
            options=(
                f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS}"
                " -c default_transaction_read_only=on"  # an observer never writes
            ),
        )
    except psycopg.Error as exc:
        raise SamplerError(
            f"the sampler cannot connect to Postgres: {redact_message(exc)}",
            hint="check the DSN (CONTEND_DSN / --dsn) and that the server accepts connections",
        ) from None


_LITERALS = [
    # String literals; one left open runs to the end: the text was cut at track_activity_query_size
    # (or QUERY_CHARS), and its tail must not leave digits to replace one by one into new fingerprints.
    (re.compile(r"'(?:[^']|'')*(?:'|\Z)"), "?"),
    (re.compile(r"\$\d+"), "?"),  # bind parameters
    (re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b"), "?"),  # numbers
    (re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)"), "(?)"),  # IN lists and VALUES rows
    (re.compile(r"\s+"), " "),
]


@functools.lru_cache(maxsize=4096)  # the same few statements repeat on every tick
def fingerprint(query: str | None) -> str | None:
    """Return ``query`` with literals and parameters replaced by ``?``, whitespace collapsed.

    >>> fingerprint("UPDATE jobs_job SET logs = '{}'  WHERE id IN (1, 2, 3)")
    'UPDATE jobs_job SET logs = ? WHERE id IN (?)'
    """
    if query is None:
        return None
    text = query
    for pattern, replacement in _LITERALS:
        text = pattern.sub(replacement, text)
    return text.strip()


class Ticker:
    """A fixed-rate schedule: tick ``k`` is due at start + k x interval, whatever a tick cost.

    ``late_ms`` is how far behind its due time the current tick began; a loop that fell behind
    records the lateness and does not replay the ticks it missed.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.next_at = clock()

    def late_ms(self) -> float:
        """Return how late the tick beginning now is, in milliseconds."""
        return max(0.0, self.clock() - self.next_at) * 1000.0

    def wait_s(self) -> float:
        """Schedule the next tick; return the seconds to wait for it (0 when already behind)."""
        self.next_at += self.interval_s
        now = self.clock()
        if self.next_at < now:
            self.next_at = now
        return self.next_at - now


class PgSampler:
    """Samples one Postgres database through a connection it owns; ``tick()`` takes one snapshot."""

    def __init__(self, conn: psycopg.Connection[Any], clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.clock = clock
        if not conn.autocommit:
            conn.autocommit = True
        # Idempotent when connect() already set them; needed for a connection made elsewhere.
        conn.execute(
            "SELECT set_config('application_name', %s, false), "
            "set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
            (APPLICATION_NAME, f"{STATEMENT_TIMEOUT_MS}ms", f"{LOCK_TIMEOUT_MS}ms"),
        )
        self.warnings: list[str] = []
        self._skipped: set[str] = set()
        self._locked_cache: tuple[frozenset[int], float, list[str]] = (frozenset(), 0.0, [])
        role = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
        row = conn.execute(PRIVILEGE_SQL).fetchone()
        self.can_see_all = bool(row and row[0])
        if not self.can_see_all:
            self._warn(NO_MONITOR_WARNING.format(role=role))
        self.activity_sql = ACTIVITY_SQL if conn.info.server_version >= 140000 else ACTIVITY_SQL_PRE14

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)

    def _optional(self, name: str, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Run a query the tick can do without; a privilege error is reported once, then skipped."""
        if name in self._skipped:
            return []
        try:
            with self.conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql, params).fetchall()
        except psycopg.errors.InsufficientPrivilege as exc:
            self._skipped.add(name)
            self._warn(f"{name} skipped from now on: {str(exc).strip().splitlines()[0]}")
            return []

    def _locked_relations(self, roots: frozenset[int]) -> list[str]:
        """Return the tables the roots hold locks on; re-read when the roots change, else every second.

        A root blocker keeps its locks until its transaction ends (and then it is no longer the
        same root), so re-reading pg_locks at 10 Hz would cost lock-manager time for nothing.
        """
        if not roots:
            return []
        cached_roots, read_at, relations = self._locked_cache
        if roots == cached_roots and time.monotonic() - read_at < LOCKED_RELATIONS_MAX_AGE_S:
            return relations
        rows = self._optional("locked_relations", LOCKED_RELATIONS_SQL, {"pids": sorted(roots)})
        relations = [r["relation"] for r in rows]
        self._locked_cache = (roots, time.monotonic(), relations)
        return relations

    def tick(self, late_ms: float = 0.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Take one snapshot; return the tick record and one record per backend (docs/records.md)."""
        t = self.clock()
        started = time.perf_counter()
        try:
            with self.conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(self.activity_sql, {"chars": QUERY_CHARS}).fetchall()
        except psycopg.errors.QueryCanceled:
            raise SamplerError(
                f"reading pg_stat_activity took more than {STATEMENT_TIMEOUT_MS} ms",
                hint="the server is overloaded; raise the sampling interval",
            ) from None
        hidden_clients = int(rows[0]["hidden_clients"]) if rows else 0
        hidden_events: dict[str, int] = dict(rows[0]["hidden_events"] or {}) if rows else {}
        rows = [row for row in rows if row["pid"] is not None]
        blocking_calls = sum(1 for row in rows if row["wait_event_type"] == "Lock")
        backends = [_backend_record(t, row) for row in rows]
        forest = build_forest(backends)
        by_pid = {b["pid"]: b for b in backends}
        locked = self._locked_relations(frozenset(forest.roots))
        cost_ms = (time.perf_counter() - started) * 1000.0
        idle = [b for b in backends if b["state"] == "idle in transaction"]
        tick = {
            "t": t,
            "backends": sum(1 for b in backends if b["backend_type"] == "client backend")
            + hidden_clients,
            "edges": forest.edges,
            "blocked": forest.blocked,
            "depth": forest.depth,
            "roots": [_root(pid, blocks, by_pid.get(pid)) for pid, blocks in forest.roots.items()],
            "idle_in_tx": len(idle),
            "idle_in_tx_max_age": max((b["xact_age"] or 0.0 for b in idle), default=0.0),
            "locked_relations": locked,
            "wait_events": dict(sorted((Counter(
                f"{b['wait_event_type']}:{b['wait_event']}" for b in backends if b["wait_event_type"]
            ) + Counter(hidden_events)).items())),
            "idle_hidden": hidden_clients,
            "cost_ms": round(cost_ms, 3),
            "late_ms": round(late_ms, 3),
            "blocking_calls": blocking_calls,
            # Each lock wait's exact start (server clock, the wait's identity) and its age at this
            # tick, so its start on the samplers' clock is t - age (docs/metrics.md, "Lock waits").
            "waits": [
                {"pid": row["pid"], "waitstart": row["waitstart"],
                 "age": round(row["server_now"] - row["waitstart"], 6)}
                for row in rows if row["waitstart"] is not None
            ],
        }
        return tick, backends


def _backend_record(t: float, row: dict[str, Any]) -> dict[str, Any]:
    blocked_by: Sequence[int] = row["blocked_by"] or ()
    return {
        "t": t,
        "pid": row["pid"],
        "app": row["app"],
        "client_addr": row["client_addr"],
        "client_port": row["client_port"],
        "backend_type": row["backend_type"],
        "state": row["state"],
        "wait_event_type": row["wait_event_type"],
        "wait_event": row["wait_event"],
        "xact_age": row["xact_age"],
        "query_age": row["query_age"],
        "state_age": row["state_age"],
        "has_xid": row["has_xid"],
        "query": row["query"],
        "fingerprint": fingerprint(row["query"]),
        # Kept apart: the query text is cut and its fingerprint drops literals, the comment's values.
        "comment": sqlcomment.parse(row["query_comment"]),
        # Parallel query may repeat a leader pid; pid 0 is a prepared transaction (no backend).
        "blocked_by": sorted(set(blocked_by) - {0}) if blocked_by else [],
        "waitstart": row["waitstart"],
    }


def _root(pid: int, blocks: int, backend: dict[str, Any] | None) -> dict[str, Any]:
    backend = backend or {}
    return {
        "pid": pid,
        "blocks": blocks,
        "state": backend.get("state"),
        "app": backend.get("app"),
        "xact_age": backend.get("xact_age"),
        "fingerprint": backend.get("fingerprint"),
        "query": backend.get("query"),
        "comment": backend.get("comment"),
    }


TIMEOUT_SETTINGS = ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout",
                    "transaction_timeout", "deadlock_timeout")


def session_timeouts(dsn: str) -> dict[str, float]:
    """Return the lock and transaction timeouts (ms, 0 = off) a new session of ``dsn`` starts with.

    Postgres shows no other session's settings; these are the server's, the database's and the
    role's defaults, which an application's own ``SET`` may change. A setting this server lacks
    (``transaction_timeout`` before 17) is left out. Read on a connection of its own, because the
    sampler's own connection sets short timeouts.
    """
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10,
                             application_name=APPLICATION_NAME) as conn:
            rows = conn.execute(
                "SELECT name, setting::float8 * CASE unit WHEN 's' THEN 1000 WHEN 'min' THEN 60000 ELSE 1 END"
                "  FROM pg_settings WHERE name = ANY(%s)", (list(TIMEOUT_SETTINGS),),
            ).fetchall()
    except psycopg.Error as exc:
        raise SamplerError(f"cannot read the timeouts: {redact_message(exc)}") from None
    return {str(name): float(value) for name, value in rows}
