"""A finding of the wait-for graph as a picture: an inline SVG the report embeds beside its words.

Threads are boxes (role and function, file:line, backend and transaction age); the things waited
for (a Python lock, a row of a table) are boxes of their own; an arrow goes from a thread to what it
waits for ("waits for") and from that to the thread holding it ("held by"). A cycle's arrows are
red, and the caption names the timeout that ends it. networkx lays it out: a cycle on a circle, any
other finding in columns (waiters, then what they wait for, then its holder). Drawn with matplotlib
on its own ``Figure`` (no pyplot, no global state); text stays text in the SVG (searchable, and
scaled with the page), and the SVG has no script and no external reference.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

import matplotlib
import networkx as nx
from matplotlib.figure import Figure

from contend.diagnosis.threads import short_path

WIDTH_IN = 7.2
"""The picture's width: about half the report's, so the finding's words fit beside it."""
THREAD_STYLE = {"boxstyle": "round,pad=0.45", "facecolor": "#e7f5ff", "edgecolor": "#1864ab"}
LOCK_STYLE = {"boxstyle": "round,pad=0.35", "facecolor": "#fff3bf", "edgecolor": "#e67700"}
ROW_STYLE = {"boxstyle": "round,pad=0.35", "facecolor": "#ffe8cc", "edgecolor": "#d9480f"}
CYCLE, OTHER = "#c92a2a", "#495057"
UNKNOWN = "unknown holder"
SVG_DPI = 72
"""The SVG backend's own: the boxes sized before the arrows are drawn keep their size when saved."""
WAITERS_DRAWN = 4
"""Threads waiting for one thing drawn each in its box; the rest are counted in one."""


def _ms(ms: float) -> str:
    return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"


def thread_label(thread: Mapping[str, Any]) -> str:
    """``web · job_result`` / ``views.py:299`` / ``backend 6012 · tx 5.2 s``."""
    head = " · ".join(str(x) for x in (thread.get("role"), thread.get("function") or "?") if x)
    where = f"{short_path(thread.get('file'))}:{thread.get('line') or '?'}"
    tail = [f"backend {thread['backend_pid']}" if thread.get("backend_pid") else "no backend"]
    if thread.get("xact_age_s") is not None:
        tail.append(f"tx {float(thread['xact_age_s']):.1f} s")
    return f"{head}\n{where}\n{' · '.join(tail)}"


def ends_text(ends: Mapping[str, Any] | None) -> str:
    """The caption: which timeout ends the cycle (Postgres cannot see a wait in Python)."""
    if not ends:
        return "No known Postgres timeout ends it (your app may set its own)."
    return (f"Only {ends['name']} ({_ms(float(ends['ms']))}) ends it, "
            f"on backend {ends['backend_pid']}.")


def graph_of(finding: Mapping[str, Any]) -> nx.DiGraph[str]:
    """The finding's threads and what they wait for, as a directed graph whose nodes and edges carry words.

    Past ``WAITERS_DRAWN`` threads waiting for one thing, the rest are one box ("+5 more threads").
    """
    graph: nx.DiGraph[str] = nx.DiGraph()
    cycle = finding.get("kind") == "cross_layer_deadlock"
    threads = {str(t.get("key") or f"{t.get('pid')}:{t.get('tid')}"): t for t in finding.get("threads") or ()}

    def thread(key: str) -> None:
        if key not in graph:
            label = key if key == UNKNOWN else f"thread {key}"
            label = thread_label(threads[key]) if key in threads else label
            graph.add_node(key, kind="thread", label=label, layer=0)

    waiting: dict[str, int] = {}
    for edge in finding.get("edges") or ():
        waiter, holder = str(edge["waiter"]), str(edge.get("holder") or UNKNOWN)
        is_row = edge.get("layer") == "db"
        thing = str(edge.get("thing") or edge.get("what") or "?")
        resource = f"row held by {holder}" if is_row else f"lock {edge.get('lock') or thing} {holder}"
        waiting[resource] = waiting.get(resource, 0) + 1
        if not cycle and waiting[resource] > WAITERS_DRAWN:
            continue
        thread(waiter)
        thread(holder)
        graph.add_node(resource, kind="row" if is_row else "lock", label=thing, layer=1)
        graph.add_edge(waiter, resource, label="waits for", cycle=cycle)
        graph.add_edge(resource, holder, label="held by", cycle=cycle)
    for resource, n in waiting.items():
        if not cycle and n > WAITERS_DRAWN:
            more = f"+{n - WAITERS_DRAWN} more {resource}"
            graph.add_node(more, kind="thread", label=f"+{n - WAITERS_DRAWN} more threads", layer=0)
            graph.add_edge(more, resource, label="wait for", cycle=False)
    for node in graph.nodes:  # columns for a finding without a cycle: waiters, things, holders
        if graph.nodes[node]["kind"] == "thread":
            graph.nodes[node]["layer"] = 2 if graph.in_degree(node) and not graph.out_degree(node) else 0
    return graph


def layout(graph: nx.DiGraph[str], cycle: bool) -> dict[Any, tuple[float, float]]:
    """A cycle on a circle, in the order its waits follow; otherwise columns left to right (waiters,
    what they wait for, its holder), each column spread over the height."""
    if cycle:
        order = list(nx.find_cycle(graph)) if graph.number_of_edges() else []
        nodes = [u for u, _ in order] or list(graph.nodes)
        nodes += [n for n in graph.nodes if n not in nodes]
        ordered: nx.DiGraph[str] = nx.DiGraph()
        ordered.add_nodes_from(nodes)  # circular_layout places the nodes in this order
        return {n: (float(x), float(y)) for n, (x, y) in nx.circular_layout(ordered, scale=1.0).items()}
    pos = nx.multipartite_layout(graph, subset_key="layer", align="vertical")
    # multipartite_layout keeps the aspect of a tall column; the picture is wide: scale each axis.
    xs, ys = [float(p[0]) for p in pos.values()], [float(p[1]) for p in pos.values()]
    def fit(v: float, lo: float, hi: float, span: float) -> float:
        return 0.0 if hi == lo else (2 * (v - lo) / (hi - lo) - 1) * span
    return {n: (fit(float(x), min(xs), max(xs), 1.35), fit(float(y), min(ys), max(ys), 1.0))
            for n, (x, y) in pos.items()}


def picture(finding: Mapping[str, Any], title: str) -> str | None:
    """Return the finding as an inline ``<svg>`` element, None when it records no edges to draw."""
    if not finding.get("edges"):
        return None
    graph = graph_of(finding)
    cycle = finding.get("kind") == "cross_layer_deadlock"
    pos = layout(graph, cycle)
    rows = max(1, max(sum(1 for n in graph if graph.nodes[n]["layer"] == k) for k in (0, 1, 2)))
    height = 4.8 if cycle else max(2.6, 1.15 * rows + 1.2)
    fig = Figure(figsize=(WIDTH_IN, height), dpi=SVG_DPI)
    ax = fig.add_axes((0.0, 0.08, 1.0, 0.84))
    ax.set_axis_off()
    ax.set_xlim(-2.0, 2.0)
    ax.set_ylim(-1.35, 1.35 if cycle else 1.45)
    boxes = {}
    for node, (x, y) in pos.items():
        data = graph.nodes[node]
        style = {"thread": THREAD_STYLE, "lock": LOCK_STYLE, "row": ROW_STYLE}[data["kind"]]
        is_thread = data["kind"] == "thread"
        weight = "normal" if is_thread else "bold"
        boxes[node] = ax.text(x, y, data["label"], ha="center", va="center", bbox=style, zorder=3,
                              fontsize=11.5 if is_thread else 12, fontweight=weight)
    fig.draw_without_rendering()  # sizes the boxes, so that the arrows end at their borders
    for u, v, data in graph.edges(data=True):
        color = CYCLE if data["cycle"] else OTHER
        ax.annotate("", xy=pos[v], xytext=pos[u], zorder=2,
                    arrowprops={"arrowstyle": "-|>", "color": color, "lw": 2.2 if data["cycle"] else 1.3,
                                "patchA": boxes[u].get_bbox_patch(), "patchB": boxes[v].get_bbox_patch(),
                                "shrinkA": 4, "shrinkB": 4, "mutation_scale": 14,
                                "connectionstyle": "arc3,rad=0.12" if cycle else "arc3,rad=0.0"})
        if cycle:  # in columns, the column heads say it once
            (x0, y0), (x1, y1) = pos[u], pos[v]
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, data["label"], ha="center", va="center", fontsize=10.5,
                    color=color, zorder=4, bbox={"boxstyle": "square,pad=0.1", "facecolor": "white",
                                                 "edgecolor": "none", "alpha": 0.85})
    if not cycle:
        for x, head in ((-1.35, "threads waiting"), (0.0, "wait for"), (1.35, "held by")):
            ax.text(x, 1.3, head, ha="center", va="center", fontsize=10.5, color=OTHER, style="italic")
    fig.text(0.5, 0.965, title, ha="center", va="top", fontsize=12.5, fontweight="bold")
    if cycle:
        fig.text(0.5, 0.025, ends_text(finding.get("ends")), ha="center", va="bottom", fontsize=11.5,
                 color=CYCLE)
    return to_svg(fig)


def to_svg(fig: Figure) -> str:
    """Return ``fig`` as an ``<svg>`` element to put in the page (text kept as text, no XML prologue)."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "contend"}):
        fig.savefig(buf, format="svg", dpi=SVG_DPI, metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)  # no reference outside
    # Scale with the column it sits in: the figure's size stays the aspect ratio (viewBox).
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 width="100%"', text, count=1)


def finding_picture(finding: Mapping[str, Any]) -> str | None:
    """The picture of a variant's worst finding of the wait-for graph, titled by its kind and moment."""
    titles = {"cross_layer_deadlock": "Cross-layer deadlock", "python_lock_convoy": "Python lock convoy",
              "idle_in_tx_waiting_on_app": "Idle in transaction, blocked in the app"}
    kind = str(finding.get("kind"))
    if kind not in titles:
        return None
    at = finding.get("t_worst_s")
    return picture(finding, titles[kind] + (f", at {float(at):.1f} s" if at is not None else ""))
