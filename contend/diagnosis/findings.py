"""Findings: what the cross-layer wait-for graph shows, in one plain sentence each.

Pure. ``of_graph`` reads one ``waitgraph.Graph`` and returns the findings of that moment: each with
``text`` (every thread named in full), ``short`` (what and where in a few words, by function:
"`job_result` holds a row of jobs_job and waits for JobLogHandler's lock; ...") and its threads,
each with role, transaction age and what it waits for (the report's thread table);
``aggregate`` merges the findings of every moment of a run into one per (kind, identity), with
first and last seen, samples and episodes. Kinds, most important first:

    cross_layer_deadlock       a cycle through at least one Python edge and one database edge
    python_lock_convoy         >= 2 threads with open transactions wait on one Python lock
    idle_in_tx_waiting_on_app  a root blocker idle in transaction while its thread is blocked in the app
    dominant_root_blocker      the statement that caused most blocked-seconds (from the Postgres ticks)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from contend.diagnosis.clients import parse_app_name
from contend.diagnosis.waitgraph import Edge, Graph, activity, describe, frame_state

KINDS = ("cross_layer_deadlock", "python_lock_convoy", "idle_in_tx_waiting_on_app", "dominant_root_blocker")
KIND_WORDS = {"cross_layer_deadlock": "cross-layer deadlock", "python_lock_convoy": "Python lock convoy",
              "idle_in_tx_waiting_on_app": "idle in transaction, blocked in the app",
              "dominant_root_blocker": "dominant root blocker"}
LOCK_KINDS = ("lock", "handler lock")
TIMEOUTS = ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout", "transaction_timeout")


def _finding(kind: str, key: str, graph: Graph, threads: Iterable[str], text: str,
             **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "key": key, "t": graph.t,
            "threads": [_thread(graph, k) for k in threads if k in graph.nodes], "text": text, **extra}


def _thread(graph: Graph, key: str) -> dict[str, Any]:
    """A thread of a finding: where it is, its role, its transaction's age and what it waits for."""
    node = graph.nodes[key]
    client = parse_app_name(str((node.backend or {}).get("app") or ""))
    age = (node.backend or {}).get("xact_age")
    out = graph.out(key)
    return node.site() | {
        "key": key, "role": client.role if client else None,
        "xact_age_s": None if age is None else round(float(age), 3),
        "waits_for": thing(graph, out[0]) if out else None,
    }


_TABLE = re.compile(r'(?:UPDATE|INTO|FROM|LOCK TABLE)\s+(?:ONLY\s+)?"?([A-Za-z_][\w.]*)"?', re.IGNORECASE)
_HANDLER_LOCK = re.compile(r"^the lock of logging handler (\S+)$")


def thing(graph: Graph, edge: Edge) -> str:
    """Name what an edge waits for in a few words: "a row of jobs_job", "JobLogHandler's lock"."""
    if edge.layer == "db":
        waiter = graph.nodes.get(edge.waiter)
        match = _TABLE.search(str(((waiter.backend if waiter else None) or {}).get("query") or ""))
        return f"a row of {match[1].split('.')[-1]}" if match else "a row lock"
    handler = _HANDLER_LOCK.match(edge.what)
    return f"{handler[1]}'s lock" if handler else edge.what


def _fn(graph: Graph, key: str) -> str:
    node = graph.nodes.get(key)
    if node is None:
        return "an unknown thread"
    if node.tid is None and node.backend is not None:
        return f"backend {node.backend['pid']}"
    return f"`{node.site()['function'] or '?'}`"


def cycle_words(graph: Graph, cycle: Sequence[Edge]) -> str:
    """Say what each thread of a cycle holds and waits for: "`job_result` holds a row of jobs_job and
    waits for JobLogHandler's lock; `_cachalot` holds that lock and waits for the row"."""
    def again(edge: Edge) -> str:
        return "lock" if edge.layer == "python" else "row"

    parts = [f"{_fn(graph, cycle[0].waiter)} holds {thing(graph, cycle[-1])} and waits for "
             f"{thing(graph, cycle[0])}"]
    for i, edge in enumerate(cycle[1:], start=1):
        wanted = f"the {again(edge)}" if i == len(cycle) - 1 else thing(graph, edge)
        parts.append(f"{_fn(graph, edge.waiter)} holds that {again(cycle[i - 1])} and waits for {wanted}")
    return "; ".join(parts)


def of_graph(graph: Graph, timeouts: Mapping[str, float | None] | None = None) -> list[dict[str, Any]]:
    """Return the findings of one moment, most important first."""
    return deadlocks(graph, timeouts or {}) + convoys(graph) + idle_waiting_on_app(graph)


# --- cross-layer deadlocks ------------------------------------------------------------------------


def cycles(graph: Graph) -> list[list[Edge]]:
    """Return one cycle of edges per Python edge that closes a cycle through a database edge: made of
    proven edges where it can be, else through inferred ones (edges through candidate threads)."""
    found: dict[frozenset[str], list[Edge]] = {}
    for proven_only in (True, False):
        usable = [e for e in graph.edges if e.holder is not None and (e.proof == "proven" or not proven_only)]
        out_edges: dict[str, list[Edge]] = {}
        for edge in usable:
            out_edges.setdefault(edge.waiter, []).append(edge)
        for start in usable:
            if start.layer != "python":
                continue
            path = _path(out_edges, str(start.holder), start.waiter)
            if path is None:
                continue
            cycle = [start, *path]
            nodes = {e.waiter for e in cycle}
            # the same cycle seen through a candidate thread and through its backend is one cycle
            nodes |= {c for e in cycle for c in e.candidates} if not proven_only else set()
            if any(e.layer == "db" for e in cycle) and not any(nodes >= k for k in found):
                found.setdefault(frozenset(nodes), cycle)
    return list(found.values())


def proof(graph: Graph, edges: Sequence[Edge]) -> dict[str, Any]:
    """Return ``proof`` (``proven`` when every edge is) and, per backend mapped to several threads,
    its candidates."""
    through = {e.waiter for e in edges} | {str(e.holder) for e in edges}
    candidates = [{"backend_pid": (graph.nodes[k].backend or {}).get("pid"),
                   "candidates": [graph.nodes[c].site() for c in graph.nodes[k].candidates]}
                  for k in sorted(through) if k in graph.nodes and graph.nodes[k].candidates]
    return {"proof": "proven" if all(e.proof == "proven" for e in edges) else "inferred",
            "candidates": candidates}


def _path(out_edges: Mapping[str, list[Edge]], source: str, target: str) -> list[Edge] | None:
    """Return the shortest path of edges from ``source`` to ``target`` (breadth first), if any."""
    if source == target:
        return []
    came: dict[str, Edge] = {}
    frontier = [source]
    seen = {source}
    while frontier:
        nxt = []
        for node in frontier:
            for edge in out_edges.get(node, ()):
                holder = str(edge.holder)
                if holder in seen:
                    continue
                seen.add(holder)
                came[holder] = edge
                if holder == target:
                    path = []
                    while holder != source:
                        path.append(came[holder])
                        holder = came[holder].waiter
                    return path[::-1]
                nxt.append(holder)
        frontier = nxt
    return None


def _ms(value: float) -> str:
    return f"{value / 1000:g} s" if value >= 1000 else f"{value:g} ms"


def _options(graph: Graph, cycle: Sequence[Edge], timeouts: Mapping[str, float | None]
             ) -> list[tuple[float, str, int]]:
    """(ms, timeout name, backend pid) of every set Postgres timeout that would end the cycle."""
    options = []
    for edge in cycle:
        node = graph.nodes[edge.waiter]
        if node.backend is None:
            continue
        bpid = node.backend["pid"]
        names = ["transaction_timeout"]
        if edge.layer == "db":
            names += ["lock_timeout", "statement_timeout"]
        if node.idle_in_transaction:
            names.append("idle_in_transaction_session_timeout")
        options += [(float(timeouts[n] or 0), n, bpid) for n in names if timeouts.get(n)]
    return options


def ender(graph: Graph, cycle: Sequence[Edge], timeouts: Mapping[str, float | None]) -> dict[str, Any] | None:
    """The timeout that ends the cycle first: ``{"name", "ms", "backend_pid"}``, None when none will."""
    options = _options(graph, cycle, timeouts)
    if not options:
        return None
    value, name, bpid = min(options)
    return {"name": name, "ms": value, "backend_pid": bpid}


def ender_words(end: Mapping[str, Any] | None, timeouts_known: bool) -> str:
    """``Only statement_timeout (30 s) ends it.``, or what is known when no timeout that would is.

    Postgres shows no session's settings to another: the known timeouts are the server's defaults for
    a new session and what the application declares (``app_timeouts``), so the absence of a timeout
    is never asserted, only that none is known."""
    if end is not None:
        return f"Only {end['name']} ({_ms(float(end['ms']))}) ends it."
    if timeouts_known:
        return "No known timeout ends it (the server's defaults set none; your app may set its own)."
    return "Its timeouts were not read."


def breaker(graph: Graph, cycle: Sequence[Edge], timeouts: Mapping[str, float | None]) -> str:
    """Say which Postgres timeout ends the cycle first, or that none will."""
    options = _options(graph, cycle, timeouts)
    if not options:
        known = [n for n in TIMEOUTS if n in timeouts]
        if not known:
            return "Postgres cannot see it (one wait is in Python) and its timeouts were not read."
        return ("Postgres cannot see it (one wait is in Python) and no known timeout would end it (the "
                "server's defaults for a new session: " + ", ".join(f"{n} = 0" for n in known)
                + "); a timeout the application sets on its own sessions is not visible to another "
                "session (declare it: app_timeouts, or contend watch --app-timeout), else it lasts until a "
                "process is stopped.")
    value, name, bpid = min(options)
    action = "terminates the session of" if name == "idle_in_transaction_session_timeout" else "cancels"
    return (f"Postgres cannot see it (one wait is in Python); {name} ({_ms(value)}) {action} "
            f"backend {bpid} and ends it.")


def deadlocks(graph: Graph, timeouts: Mapping[str, float | None]) -> list[dict[str, Any]]:
    findings = []
    for cycle in cycles(graph):
        steps = [f"{describe(graph, cycle[0].waiter)} waits for {cycle[0].what}"]
        steps += [f"held by {describe(graph, e.waiter)}, which waits for {e.what}" for e in cycle[1:]]
        text = (f"Cross-layer deadlock of {len(cycle)} threads: {', '.join(steps)}, held by the first. "
                f"{breaker(graph, cycle, timeouts)}")
        key = "|".join(sorted(e.waiter for e in cycle))
        end = ender(graph, cycle, timeouts)
        short = f"{cycle_words(graph, cycle)}. {ender_words(end, any(n in timeouts for n in TIMEOUTS))}"
        findings.append(_finding("cross_layer_deadlock", key, graph, [e.waiter for e in cycle], text,
                                 short=short, ends=end,
                                 edges=[e.record() | {"thing": thing(graph, e)} for e in cycle],
                                 **proof(graph, cycle)))
    return findings


# --- Python lock convoys --------------------------------------------------------------------------


def lock_waiters(graph: Graph) -> dict[str, list[Edge]]:
    """Return Python lock identity -> the edges of the threads waiting for it."""
    by_lock: dict[str, list[Edge]] = {}
    for edge in graph.edges:
        # an edge through a backend's candidate threads repeats the waits of those threads
        if edge.layer == "python" and edge.kind in LOCK_KINDS and edge.lock and not edge.candidates:
            by_lock.setdefault(edge.lock, []).append(edge)
    return by_lock


def xact_age(graph: Graph, key: str) -> float:
    """Return how long a thread's transaction is open; for a candidate thread of backends mapped to
    several threads, the youngest of those backends' (what is sure)."""
    node = graph.nodes[key]
    if node.backend is not None:
        return float(node.backend.get("xact_age") or 0.0)
    ages = [float(n.backend.get("xact_age") or 0.0) for n in graph.nodes.values()
            if key in n.candidates and n.backend]
    return min(ages, default=0.0)


def convoys(graph: Graph) -> list[dict[str, Any]]:
    findings = []
    for lock, edges in lock_waiters(graph).items():
        in_tx = [e for e in edges if graph.nodes[e.waiter].in_transaction]
        if len(in_tx) < 2:
            continue
        holders = {e.holder for e in edges}
        holder = holders.pop() if len(holders) == 1 else None
        ages = [xact_age(graph, e.waiter) for e in in_tx]
        if holder is None:
            who = f"an unknown holder ({edges[0].inferred})"
        else:
            who = f"{describe(graph, holder)}, which {activity(graph, holder)}"
        text = (f"{len(in_tx)} threads with open transactions (oldest {max(ages):.1f} s) wait for "
                f"{edges[0].what}, held by {who}.")
        threads = ([holder] if holder else []) + [e.waiter for e in in_tx]
        holding = f"{_fn(graph, holder)} holds {thing(graph, edges[0])}" if holder else \
            f"an unknown thread holds {thing(graph, edges[0])}"
        short = (f"{holding}; {len(in_tx)} threads with open transactions (oldest {max(ages):.1f} s) "
                 f"wait for it.")
        findings.append(_finding("python_lock_convoy", lock, graph, threads, text, waiters=len(in_tx),
                                 holder=graph.nodes[holder].site() if holder else None, short=short,
                                 edges=[e.record() | {"thing": thing(graph, e)} for e in edges],
                                 **proof(graph, edges)))
    return findings


# --- root blockers idle in transaction, blocked in the application --------------------------------


def blocked_in_app(graph: Graph, key: str) -> bool:
    """Tell whether a thread idle in transaction is held up in the application (not running)."""
    node = graph.nodes[key]
    if node.idle_in_transaction and node.candidates:  # every candidate thread is held up
        return all(c in graph.nodes and _held_up(graph, c) for c in node.candidates)
    if not node.idle_in_transaction or node.tid is None or not node.frames:
        return False
    return _held_up(graph, key)


def _held_up(graph: Graph, key: str) -> bool:
    node = graph.nodes[key]
    if not node.frames:
        return False
    if any(e.layer == "python" for e in graph.out(key)):
        return True
    # In the driver: most likely the same connection's next statement, begun after the Postgres
    # snapshot that saw it idle (the dump comes up to one tick later).
    return not node.active and frame_state(node.frames) != "postgres"


def idle_waiting_on_app(graph: Graph) -> list[dict[str, Any]]:
    findings = []
    for key, node in graph.nodes.items():
        blocked = [e for e in graph.into(key) if e.layer == "db"]
        if not blocked or any(e.layer == "db" for e in graph.out(key)) or not blocked_in_app(graph, key):
            continue
        site = node.site()
        assert node.backend is not None  # idle in transaction
        where = "on a network call" if frame_state(node.frames) == "network" else "in the application"
        text = (f"Backend {node.backend['pid']} blocks {len(blocked)} backend(s) while idle in "
                f"transaction for "
                f"{float(node.backend.get('xact_age') or 0):.1f} s: its {describe(graph, key)} is blocked "
                f"{where}, and {activity(graph, key)}.")
        owner = f" of {_fn(graph, key)}" if node.tid is not None else (
            f" of one of {len(node.candidates)} threads" if node.candidates else "")
        short = (f"backend {node.backend['pid']}{owner}, idle in transaction "
                 f"{float(node.backend.get('xact_age') or 0):.1f} s, blocks {len(blocked)} while its thread "
                 f"is blocked {where}.")
        findings.append(_finding("idle_in_tx_waiting_on_app", f"{key}|{site['function']}", graph,
                                 [key, *(e.waiter for e in blocked)], text, blocks=len(blocked), short=short,
                                 edges=[e.record() | {"thing": thing(graph, e)} for e in blocked],
                                 **proof(graph, blocked)))
    return findings


# --- gauges of one moment, for the metrics --------------------------------------------------------


def gauges(graph: Graph) -> dict[str, int]:
    """Return the per-moment counts the run's metrics take the maximum of."""
    waiters = [len(e) for e in lock_waiters(graph).values()]
    return {
        "python_lock_waiters": max(waiters, default=0),
        "idle_in_tx_blocked_in_app": sum(1 for k in graph.nodes if blocked_in_app(graph, k)),
    }


# --- over a run -----------------------------------------------------------------------------------


def aggregate(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Merge the findings of ``waitgraph.jsonl`` records into one per (kind, key), most important first.

    An episode is a run of consecutive records that show the finding; ``samples`` counts records.
    Its words and threads are those of its worst moment (the most threads waiting or blocked); of
    several as bad, the one whose threads are best known (the most seen in a dump: a waiter's process
    is not dumped in every round), then the latest.
    """
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    last_index: dict[tuple[str, str], int] = {}
    kept: dict[tuple[str, str], tuple[int, int]] = {}
    for index, record in enumerate(sorted(records, key=lambda r: float(r["t"]))):
        for found in record.get("findings") or ():
            ident = (str(found["kind"]), str(found["key"]))
            entry = merged.get(ident)
            size = int(found.get("waiters") or found.get("blocks") or len(found.get("threads") or ()))
            if entry is None:
                entry = merged[ident] = {
                    "kind": ident[0], "key": ident[1], "first_seen": record["t"], "samples": 0,
                    "episodes": 0, "size_max": 0,
                }
            if last_index.get(ident) != index - 1:
                entry["episodes"] += 1
            last_index[ident] = index
            entry["last_seen"] = record["t"]
            entry["samples"] += 1
            known = sum(1 for thread in found.get("threads") or () if thread.get("function"))
            if (size, known) >= kept.get(ident, (0, 0)):  # the worst moment, then the best known
                kept[ident] = (size, known)
                entry.update(size_max=size, t_worst=record["t"], candidates=found.get("candidates") or [],
                             **{k: found.get(k) for k in ("threads", "text", "short", "edges", "ends")})
            # proven once, proven: a moment whose mapping was weaker does not undo it
            proven = entry.get("proof") == "proven" or found.get("proof", "proven") == "proven"
            entry["proof"] = "proven" if proven else "inferred"
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(merged.values(), key=lambda f: (order.get(f["kind"], 99), -f["samples"], f["first_seen"]))
