"""The Postgres sampler: what the backends do, per tick, at a cost that follows what changes.

A polite observer (field-notes section 8): its own connection, named ``contend-sampler``, short
``statement_timeout`` and ``lock_timeout``, read-only, its own backend excluded. A tick is one
transaction (one snapshot of the backends' status, which Postgres keeps for the transaction):

1. ``KEYS_SQL``: every backend of the database through the per-backend functions; an idle session is
   only counted, every other backend returns its key (wait event, transaction and query start).
2. ``ROWS_SQL``: the full row of each backend that is new or whose key changed (all every
   ``ROWS_FULL_EVERY_S``); the others keep their record.
3. The lock-wait edges, only when a waiter or a blocker changed, came or went, or every
   ``EDGES_MAX_AGE_S``: ``pg_blocking_pids()`` per waiter (each call takes every lock-manager
   partition lock), or above ``LOCKS_PATH_WAITERS`` waiters one read of ``pg_locks``.

A query that fails for lack of privileges is reported once and then skipped. The SQL of every
metric is in docs/metrics.md.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from contend.diagnosis import sqlcomment
from contend.diagnosis.forest import build_forest
from contend.diagnosis.locks import Lock, blockers_from_locks
from contend.errors import SamplerError
from contend.redact import redact_message
from contend.sample.backends import AGES, age
from contend.sample.ticker import Ticker as Ticker  # where the sampler loops import it from

log = logging.getLogger(__name__)

APPLICATION_NAME = "contend-sampler"
STATEMENT_TIMEOUT_MS = 200
LOCK_TIMEOUT_MS = 50
QUERY_CHARS = 500
LOCKED_RELATIONS_MAX_AGE_S = 1.0

# Every backend of the database, the sampler's own excepted, through the per-backend functions (one
# pass over the backends' status; the wait event, which each call finds by a walk over all processes,
# is read only for the rows returned). A session outside a transaction (state 'idle': its client's
# next command is all it waits for) is counted in the first row, unless it is in ``keep`` (blockers
# of the last edges: a session-level advisory lock outlives its transaction); the others return
# their key, what tells the sampler that a backend changed.
KEYS_SQL = """
WITH k AS MATERIALIZED (
  SELECT id, pid, xact_start,
         -- a session of a role whose activity this one may not see shows no transaction start
         xact_start IS NULL AND (%(all)s OR pg_has_role(pg_stat_get_backend_userid(id), 'USAGE')) AS idle
    FROM (SELECT id, pg_stat_get_backend_pid(id) AS pid, pg_stat_get_backend_xact_start(id) AS xact_start
            FROM pg_stat_get_backend_idset() id
           WHERE pg_stat_get_backend_dbid(id) = (SELECT oid FROM pg_database
                                                  WHERE datname = current_database())) b
   WHERE pid <> pg_backend_pid()
)
SELECT NULL::int AS pid, NULL::text AS wait_event_type, NULL::text AS wait_event, NULL::float8 AS xact_start,
       EXTRACT(EPOCH FROM now())::float8 AS query_start, count(*) AS idle
  FROM k WHERE idle AND pid <> ALL(%(keep)s)
UNION ALL
SELECT pid, pg_stat_get_backend_wait_event_type(id), pg_stat_get_backend_wait_event(id),
       EXTRACT(EPOCH FROM xact_start)::float8,
       EXTRACT(EPOCH FROM pg_stat_get_backend_activity_start(id))::float8, NULL
  FROM k WHERE NOT idle OR pid = ANY(%(keep)s)
"""
ROW_COLUMNS = """a.pid, a.application_name AS app, host(a.client_addr) AS client_addr, a.client_port,
       a.backend_type, a.state, a.wait_event_type, a.wait_event,
       EXTRACT(EPOCH FROM a.xact_start)::float8 AS xact_start,
       EXTRACT(EPOCH FROM a.query_start)::float8 AS query_start,
       EXTRACT(EPOCH FROM a.state_change)::float8 AS state_change,
       a.backend_xid IS NOT NULL AS has_xid,
       left(a.query, %(chars)s) AS query,
       substring(a.query from '/\\*[^*]*=''[^*]*\\*/') AS query_comment, {leader} AS leader_pid"""
# A few rows: one pg_stat_get_activity(pid) each (each walks the backends); many: one pass over all.
ROWS_SQL = f"""SELECT {ROW_COLUMNS}
  FROM unnest(%(pids)s::int[]) p(pid), LATERAL pg_stat_get_activity(p.pid) a
 WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())"""
ROWS_SQL_MANY = f"""SELECT {ROW_COLUMNS}
  FROM pg_stat_get_activity(NULL) a
 WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND a.pid = ANY(%(pids)s)"""
ROWS_BY_PID_MAX = 40

# pg_blocking_pids() per waiter, and the start of each wait (pg_locks.waitstart, Postgres 14+) from
# one read of pg_locks.
EDGES_SQL = """
WITH waits AS MATERIALIZED (
  SELECT pid, EXTRACT(EPOCH FROM min(waitstart))::float8 AS waitstart
    FROM pg_locks WHERE NOT granted AND waitstart IS NOT NULL GROUP BY pid
)
SELECT w.pid, pg_blocking_pids(w.pid) AS blocked_by, (SELECT waitstart FROM waits WHERE waits.pid = w.pid)
  FROM unnest(%(pids)s::int[]) w(pid)
"""
EDGES_SQL_PRE14 = """
SELECT w.pid, pg_blocking_pids(w.pid) AS blocked_by, NULL::float8 FROM unnest(%(pids)s::int[]) w(pid)
"""

# Many waiters (Postgres 14+): no pg_blocking_pids() call; ONE read of pg_locks, kept for the targets
# someone waits on (pid, target, mode, granted, waitstart); contend.diagnosis.locks turns them into
# edges (docs/metrics.md, "Lock waits from pg_locks").
LOCKS_SQL = """
WITH locks AS MATERIALIZED (
  SELECT pid, ROW(locktype, database, relation, page, tuple, virtualxid, transactionid, classid, objid,
                  objsubid)::text AS target,
         mode, granted, EXTRACT(EPOCH FROM waitstart)::float8 AS waitstart
    FROM pg_locks WHERE pid IS NOT NULL
)
SELECT * FROM locks WHERE target IN (SELECT target FROM locks WHERE NOT granted)
"""
LOCKS_PATH_WAITERS = 20
"""Above this many Lock waiters, edges come from one read of pg_locks, not pg_blocking_pids()."""
EDGES_MAX_AGE_S = 1.0
ROWS_FULL_EVERY_S = 5.0

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


class PgSampler:
    """Samples one Postgres database through a connection it owns; ``tick()`` takes one snapshot."""

    def __init__(self, conn: psycopg.Connection[Any], clock: Callable[[], float] = time.time,
                 locks_above: int | None = LOCKS_PATH_WAITERS, edges_max_age_s: float = EDGES_MAX_AGE_S,
                 rows_full_every_s: float = ROWS_FULL_EVERY_S) -> None:
        """``locks_above``: above this many Lock waiters the edges come from one read of pg_locks
        (0: always; None: never; Postgres 14+ only). Edges are read again at least every
        ``edges_max_age_s``, every row every ``rows_full_every_s``, whatever changed."""
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
        version = conn.info.server_version
        self.rows_sql = {sql: sql.format(leader="a.leader_pid" if version >= 130000 else "NULL::int")
                         for sql in (ROWS_SQL, ROWS_SQL_MANY)}
        self.edges_sql = EDGES_SQL if version >= 140000 else EDGES_SQL_PRE14
        self.locks_above = locks_above if version >= 140000 else None
        self._records: dict[int, dict[str, Any]] = {}  # the last record of each backend shown or kept
        self._edges: dict[int, tuple[list[int], float | None]] = {}  # waiter: (blocked_by, waitstart)
        self._blockers: set[int] = set()  # the pids in the edges' blocked_by
        self._leaders: dict[int, int | None] = {}  # a parallel worker's leader
        self._edges_at = self._rows_at = float("-inf")
        self.edges_max_age_s, self.rows_full_every_s = edges_max_age_s, rows_full_every_s
        self._rows_read = 0
        self._wait_graph = "pg_blocking_pids"
        self._edges_read = 0
        self._shape: tuple[int, list[tuple[int, str | None]]] | None = None
        self._forest = build_forest([])

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

    def tick(self, late_ms: float = 0.0,
             interval_s: float | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Take one snapshot; return the tick record and one record per backend (docs/records.md).

        ``interval_s`` is the interval the caller ticks at (recorded: a CPU budget may stretch it).
        """
        t = self.clock()
        started = time.perf_counter()
        try:
            self._rows_read = 0
            with self.conn.transaction():  # one snapshot of the backends' status for every statement
                idle, server_now, rows, calls = self._read()
            rows_read = self._rows_read
        except psycopg.errors.QueryCanceled:
            raise SamplerError(
                f"reading pg_stat_activity took more than {STATEMENT_TIMEOUT_MS} ms",
                hint="the server is overloaded; raise the sampling interval",
            ) from None
        blockers = self._blockers
        backends, hidden_clients, hidden = [], idle, Counter({"Client:ClientRead": idle} if idle else {})
        for row in rows:  # a row read as idle is counted with the idle sessions, unless it blocks
            if row["state"] == "idle" and row["pid"] not in blockers and row["wait_event_type"] != "Lock":
                hidden_clients += row["backend_type"] == "client backend"
                if row["wait_event_type"]:
                    hidden[f"{row['wait_event_type']}:{row['wait_event']}"] += 1
                continue
            record = row.copy()  # the kept record, its ages and edges brought to this tick
            record["t"] = t
            for name, start in AGES.items():
                record[name] = age(server_now, record[start])
            record["blocked_by"], record["waitstart"] = self._edges.get(row["pid"], ([], None))
            backends.append(record)
        shape = (self._edges_read, [(b["pid"], b["wait_event_type"]) for b in backends])
        if shape != self._shape:  # the forest follows the edges and who waits on a lock
            self._shape, self._forest = shape, build_forest(backends)
        forest = self._forest
        by_pid = {b["pid"]: b for b in backends}
        locked = self._locked_relations(frozenset(forest.roots))
        cost_ms = (time.perf_counter() - started) * 1000.0
        idle_tx = [b for b in backends if b["state"] == "idle in transaction"]
        tick = {
            "t": t,
            "backends": sum(1 for b in backends if b["backend_type"] == "client backend") + hidden_clients,
            "edges": forest.edges,
            "blocked": forest.blocked,
            "depth": forest.depth,
            "roots": [_root(pid, blocks, by_pid.get(pid)) for pid, blocks in forest.roots.items()],
            "idle_in_tx": len(idle_tx),
            "idle_in_tx_max_age": max((b["xact_age"] or 0.0 for b in idle_tx), default=0.0),
            "locked_relations": locked,
            "wait_events": dict(sorted((Counter(
                f"{b['wait_event_type']}:{b['wait_event']}" for b in backends if b["wait_event_type"]
            ) + hidden).items())),
            "idle_hidden": hidden_clients,
            "cost_ms": round(cost_ms, 3),
            "late_ms": round(late_ms, 3),
            "interval_s": None if interval_s is None else round(interval_s, 4),
            "server_now": server_now,
            "blocking_calls": calls,
            "rows_read": rows_read,
            "wait_graph": self._wait_graph,
            # Each lock wait's exact start (server clock, the wait's identity) and its age at this
            # tick, so its start on the samplers' clock is t - age (docs/metrics.md, "Lock waits").
            "waits": [
                {"pid": b["pid"], "waitstart": b["waitstart"], "age": round(server_now - b["waitstart"], 6)}
                for b in backends if b["waitstart"] is not None
            ],
        }
        return tick, backends

    def _read(self) -> tuple[int, float, list[dict[str, Any]], int]:
        """Read what changed: return the idle sessions counted, the server's clock, the rows of every
        other backend (read again or kept) and the pg_blocking_pids() calls made.

        Updates the kept rows and, when a waiter or a blocker changed, the edges (``self._edges``).
        """
        waiters_before = set(self._edges)
        blockers_before = self._blockers
        with self.conn.cursor() as cur:
            # Blockers outside a transaction (a session-level advisory lock) stay read row by row.
            keep = sorted(pid for pid in blockers_before
                          if (row := self._records.get(pid)) is None or row["xact_start"] is None)
            keys = cur.execute(KEYS_SQL, {"keep": keep, "all": self.can_see_all}).fetchall()
        _, _, _, _, server_now, idle = keys[0]
        current = {pid: key for pid, *key, _ in keys[1:]}
        now = time.monotonic()
        full = now - self._rows_at >= self.rows_full_every_s
        if full:
            self._rows_at = now
        changed = {pid for pid, key in current.items()
                   if full or (row := self._records.get(pid)) is None or _key_of(row) != tuple(key)}
        gone = set(self._records) - set(current)
        self._records = {pid: row for pid, row in self._records.items() if pid in current}
        self._leaders = {pid: leader for pid, leader in self._leaders.items() if pid in current}
        self._fetch(changed)
        waiters = {pid for pid, row in self._records.items() if row["wait_event_type"] == "Lock"}
        involved = waiters | waiters_before | blockers_before
        calls = 0
        if not waiters:
            if self._edges:
                self._set_edges({})
        elif (changed | gone) & involved or now - self._edges_at >= self.edges_max_age_s:
            self._edges_at = now
            calls = self._read_edges(waiters)
            idle_blockers = self._blockers - set(self._records)  # counted idle: a session-level advisory lock
            self._fetch(idle_blockers)
            idle -= len(idle_blockers & set(self._records))
        return int(idle), float(server_now), [self._records[pid] for pid in sorted(self._records)], calls

    def _set_edges(self, edges: dict[int, tuple[list[int], float | None]]) -> None:
        self._edges, self._edges_read = edges, self._edges_read + 1
        self._blockers = {pid for blocked_by, _ in edges.values() for pid in blocked_by}

    def _fetch(self, pids: set[int]) -> None:
        """Read the full rows of ``pids`` into the kept rows; a backend gone meanwhile has none."""
        if not pids:
            return
        sql = self.rows_sql[ROWS_SQL if len(pids) <= ROWS_BY_PID_MAX else ROWS_SQL_MANY]
        with self.conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(sql, {"pids": sorted(pids), "chars": QUERY_CHARS}).fetchall()
            self._rows_read += len(rows)
            for row in rows:
                row["fingerprint"] = fingerprint(row["query"])
                # Kept apart: the query text is cut and its fingerprint drops literals, the comment's values.
                row["comment"] = sqlcomment.parse(row.pop("query_comment"))
                self._leaders[row["pid"]] = row.pop("leader_pid")
                self._records[row["pid"]] = _backend_record(row)

    def _read_edges(self, waiters: set[int]) -> int:
        """Read who blocks each waiter into ``self._edges``; return the pg_blocking_pids() calls made."""
        above = self.locks_above
        pids = sorted(waiters)
        with self.conn.cursor() as cur:
            if above is not None and (above == 0 or len(waiters) > above):
                self._wait_graph = "pg_locks"
                leaders = {pid: self._leaders.get(pid) or pid for pid in self._records}
                locks = [Lock(pid, leaders.get(pid, pid), target, mode, granted, start)
                         for pid, target, mode, granted, start in cur.execute(LOCKS_SQL).fetchall()]
                self._set_edges(_edges_from_locks(pids, locks))
                return 0
            self._wait_graph = "pg_blocking_pids"
            rows = cur.execute(self.edges_sql, {"pids": pids}).fetchall()
        # Parallel query may repeat a leader pid; pid 0 is a prepared transaction (no backend).
        self._set_edges({pid: (sorted(set(blocked_by or ()) - {0}), start)
                         for pid, blocked_by, start in rows})
        return len(pids)


def _key_of(row: dict[str, Any]) -> tuple[Any, ...]:
    """What KEYS_SQL reads of a backend: a row is read again when this changed.

    A row's state comes from the transaction's snapshot of the backends' status, its wait event from
    the process as it is read: a move from ``active`` to ``idle in transaction`` caught between the two
    shows ``active`` waiting for its client, and changes no start. Such a row is read again next tick.
    """
    if row["state"] == "active" and row["wait_event"] == "ClientRead":
        return ()
    return row["wait_event_type"], row["wait_event"], row["xact_start"], row["query_start"]


def _edges_from_locks(waiters: list[int], locks: list[Lock]) -> dict[int, tuple[list[int], float | None]]:
    blocked_by = blockers_from_locks(locks)
    waitstart: dict[int, float] = {}
    for lock in locks:
        if not lock.granted and lock.waitstart is not None:
            waitstart[lock.pid] = min(lock.waitstart, waitstart.get(lock.pid, lock.waitstart))
    return {pid: (sorted(set(blocked_by.get(pid, ())) - {0}), waitstart.get(pid)) for pid in waiters}


def _backend_record(row: dict[str, Any]) -> dict[str, Any]:
    """The record of a row read, in its keys' order; ``t``, the ages and the edges are set per tick."""
    return {
        "t": None,
        "pid": row["pid"],
        "app": row["app"],
        "client_addr": row["client_addr"],
        "client_port": row["client_port"],
        "backend_type": row["backend_type"],
        "state": row["state"],
        "wait_event_type": row["wait_event_type"],
        "wait_event": row["wait_event"],
        # Ages from the starts (server clock), so that a record by change keeps the starts only.
        "xact_age": None,
        "query_age": None,
        "state_age": None,
        "xact_start": row["xact_start"],
        "query_start": row["query_start"],
        "state_change": row["state_change"],
        "has_xid": row["has_xid"],
        "query": row["query"],
        "fingerprint": row["fingerprint"],
        "comment": row["comment"],
        "blocked_by": [],
        "waitstart": None,
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
