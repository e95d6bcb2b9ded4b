"""``contend watch``: a live view of the blocker forest of any Postgres, or its tick metrics as JSON.

Rendering is pure (``render`` turns one snapshot into rich renderables); ``watch`` is the thin
loop around it. Read-only: the sampler's connection runs with ``default_transaction_read_only``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from contend.sample.pg import PgSampler, connect

QUERY_WIDTH = 100


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def _query(text: str | None) -> str:
    return " ".join((text or "").split())[:QUERY_WIDTH]


def _label(backend: Mapping[str, Any] | None, pid: int, extra: str = "") -> Text:
    if backend is None:
        return Text(f"pid {pid}  (not in this database){extra}", style="dim")
    label = Text(f"pid {pid} ", style="bold")
    label.append(f"{backend['state'] or '?'}", style="yellow" if backend["state"] != "active" else "green")
    label.append(f"  xact {_age(backend['xact_age'])}  {backend['app'] or ''}{extra}\n")
    label.append(_query(backend["query"]), style="cyan")
    return label


def parents(blocked_by: Mapping[int, Sequence[int]]) -> dict[int, int]:
    """Return waiter -> the one blocker to draw it under: its blocker deepest in the forest.

    Postgres queues row-lock waiters so that each is blocked by every waiter ahead of it; drawing
    a waiter under its deepest blocker turns that queue into one readable chain.
    """
    level: dict[int, int] = {}

    def depth(pid: int, seen: frozenset[int]) -> int:
        if pid not in level:
            ahead = [b for b in blocked_by.get(pid, ()) if b not in seen]
            level[pid] = 1 + max((depth(b, seen | {pid}) for b in ahead), default=-1)
        return level[pid]

    return {
        pid: max(blockers, key=lambda b: (depth(b, frozenset({pid})), b))
        for pid, blockers in blocked_by.items() if blockers
    }


def render(tick: Mapping[str, Any], backends: Sequence[Mapping[str, Any]],
           warnings: Sequence[str] = ()) -> RenderableType:
    """Return the view of one snapshot: metrics line, blocker forest, idle-in-transaction holders."""
    by_pid = {int(b["pid"]): b for b in backends}
    blocked_by = {int(b["pid"]): list(b["blocked_by"]) for b in backends if b["blocked_by"]}
    drawn_under = parents(blocked_by)
    children: dict[int, list[int]] = {}
    for pid, parent in sorted(drawn_under.items()):
        children.setdefault(parent, []).append(pid)
    parts: list[RenderableType] = [Text(f"Warning: {w}", style="bold red") for w in warnings]
    parts.append(Text(
        f"{time.strftime('%H:%M:%S', time.localtime(tick['t']))}  backends {tick['backends']}  "
        f"blocked {tick['blocked']}  edges {tick['edges']}  depth {tick['depth']}  "
        f"roots {len(tick['roots'])}  idle in tx {tick['idle_in_tx']} "
        f"(oldest {_age(tick['idle_in_tx_max_age'])})  sampler {tick['cost_ms']:.1f} ms, "
        f"{tick['blocking_calls']} pg_blocking_pids calls", style="bold",
    ))
    forest = Tree("blocker forest" if tick["roots"] else "blocker forest: nobody waits on a lock")
    for root in tick["roots"]:
        node = forest.add(_label(by_pid.get(root["pid"]), root["pid"], f"  blocks {root['blocks']}"))
        _add_waiters(node, root["pid"], children, by_pid, {root["pid"]})
    parts.append(forest)
    if tick["locked_relations"]:
        parts.append(Text("root blockers hold locks on: " + ", ".join(tick["locked_relations"])))
    idle = sorted((b for b in backends if b["state"] == "idle in transaction"),
                  key=lambda b: -(b["xact_age"] or 0.0))
    if idle:
        table = Table(title="idle in transaction", title_justify="left")
        for column in ("pid", "xact age", "idle for", "application", "last query"):
            table.add_column(column)
        for b in idle:
            table.add_row(str(b["pid"]), _age(b["xact_age"]), _age(b["state_age"]), b["app"] or "",
                          _query(b["query"]))
        parts.append(table)
    return Group(*parts)


def _add_waiters(node: Tree, pid: int, children: Mapping[int, list[int]],
                 by_pid: Mapping[int, Mapping[str, Any]], seen: set[int]) -> None:
    for waiter in children.get(pid, ()):
        if waiter in seen:
            continue
        seen.add(waiter)
        backend = by_pid.get(waiter)
        event = f"  waits on {backend['wait_event_type']}:{backend['wait_event']}" if backend else ""
        _add_waiters(node.add(_label(backend, waiter, event)), waiter, children, by_pid, seen)


def watch(dsn: str, *, interval: float = 1.0, as_json: bool = False, out: TextIO | None = None) -> None:
    """Sample ``dsn`` every ``interval`` seconds until Ctrl-C; a live view, or tick records as JSON lines.

    Returns normally on Ctrl-C (watching ends only that way, so it is not an error).
    """
    out = out or sys.stdout
    conn = connect(dsn)
    try:
        sampler = PgSampler(conn)
        if as_json:
            for warning in sampler.warnings:
                print(f"Warning: {warning}", file=sys.stderr)
            while True:
                tick, _ = sampler.tick()
                out.write(json.dumps(tick, default=str) + "\n")
                out.flush()
                time.sleep(interval)
        console = Console(file=out)
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                tick, backends = sampler.tick()
                live.update(render(tick, backends, sampler.warnings), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        return
    finally:
        conn.close()
