"""Frames to figures: each function returns a PNG as a ``data:`` URI, so the HTML needs no other file.

Figures are built on ``matplotlib.figure.Figure`` (the Agg canvas), never through pyplot: no global
state, no display needed, safe to call from any thread.
"""

from __future__ import annotations

import base64
import io
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from contend.analysis import VariantRun, inflight, nats_series

DPI = 72
MAX_POINTS = 1500  # per line: a 10-minute run at 10 Hz is 6000 ticks; keep the peaks, drop the rest
COLORS = ("#1f6fb2", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#c2255c", "#5c940d")


def to_data_uri(fig: Figure) -> str:
    """Return ``fig`` as a base64 PNG ``data:`` URI."""
    buf = io.BytesIO()
    # Fixed margins instead of bbox_inches="tight": "tight" draws the figure twice.
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def peak_downsample(
    x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], points: int = MAX_POINTS
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Return at most ``points`` (x, y) pairs keeping each bin's maximum, so spikes stay visible."""
    if len(x) <= points:
        return x, y
    edges = np.linspace(0, len(x), points + 1).astype(int)
    idx = np.array([lo + int(np.argmax(y[lo:hi])) for lo, hi in itertools.pairwise(edges)])
    return x[idx], y[idx]


def _series(
    frame: pd.DataFrame, column: str, origin: float
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    data = frame[["t", column]].dropna()
    return peak_downsample(data["t"].to_numpy(dtype=float) - origin, data[column].to_numpy(dtype=float))


def timeline(run: VariantRun) -> str:
    """One variant on one time axis: latency points, in flight, blocking, idle-in-tx, queue."""
    origin = run.origin
    fig = Figure(figsize=(12, 9.5))
    axes = fig.subplots(5, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1, 1.4, 1, 1]})
    lat, fly, blk, idle, queue = axes
    req = run.requests
    if not req.empty:
        end = req["t1"].to_numpy(dtype=float) - origin
        ok = req["error"].isna().to_numpy()
        post = (req["kind"] == "result").to_numpy()
        latency = req["latency"].to_numpy(dtype=float).clip(min=1e-3)
        lat.scatter(
            end[post & ok], latency[post & ok], s=6, color=COLORS[0], label="result POST ok", rasterized=True
        )
        lat.scatter(
            end[post & ~ok],
            latency[post & ~ok],
            s=14,
            marker="x",
            color="#c92a2a",
            label="result POST failed",
            rasterized=True,
        )
        lat.scatter(end[~post], latency[~post], s=3, color="#adb5bd", label="other requests", rasterized=True)
        if latency.max() / max(latency.min(), 1e-3) > 50:
            lat.set_yscale("log")
        lat.legend(loc="upper left", fontsize=8, ncols=3)
        window = run.window
        assert window is not None
        grid = np.linspace(window[0], window[1], 800)
        fly.step(grid - origin, inflight(req, grid), where="post", color=COLORS[0])
    lat.set_ylabel("latency (s)\nat request end")
    fly.set_ylabel("requests\nin flight")
    if not run.ticks.empty:
        for column, color, label in (
            ("edges", COLORS[3], "edges (blocker chain)"),
            ("blocked", COLORS[1], "blocked backends"),
            ("depth", COLORS[2], "depth"),
        ):
            blk.plot(*_series(run.ticks, column, origin), color=color, lw=1, label=label)
        blk.legend(loc="upper left", fontsize=8, ncols=3)
        idle.plot(
            *_series(run.ticks, "idle_in_tx", origin), color=COLORS[4], lw=1, label="idle-in-tx holders"
        )
        age = idle.twinx()
        age.plot(
            *_series(run.ticks, "idle_in_tx_max_age", origin),
            color="#868e96",
            lw=0.8,
            ls="--",
            label="oldest idle-in-tx (s)",
        )
        age.set_ylabel("oldest (s)", fontsize=8)
        idle.legend(handles=idle.lines + age.lines, loc="upper left", fontsize=8, ncols=2)
    _server_events(run, blk, origin)
    blk.set_ylabel("Postgres\nlock waits")
    idle.set_ylabel("idle in\ntransaction")
    ns = nats_series(run.nats)
    if not ns.empty:
        queue.plot(ns["t"] - origin, ns["queue"], color=COLORS[5], lw=1, label="ml_results pending")
        red = queue.twinx()
        red.plot(
            ns["t"] - origin, ns["redelivered"], color=COLORS[6], lw=1, ls="--", label="redeliveries (total)"
        )
        red.set_ylabel("redelivered", fontsize=8)
        queue.legend(handles=queue.lines + red.lines, loc="upper left", fontsize=8, ncols=2)
    queue.set_ylabel("NATS\nqueue")
    queue.set_xlabel("seconds since the variant's first record")
    drain = run.drain_window
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if run.window is not None:
            ax.axvspan(run.window[0] - origin, run.window[1] - origin, color="#e7f0fa", zorder=0)
        if drain is not None:
            ax.axvspan(drain[0] - origin, drain[1] - origin, color="#fff4e6", zorder=0)
        ax.yaxis.set_label_coords(-0.045, 0.5)  # aligned labels without align_ylabels' costly layout pass
    phases = "shaded: load (blue), drain (orange)" if drain is not None else "shaded: load"
    lat.set_title(phases, fontsize=8, loc="right")
    fig.subplots_adjust(left=0.075, right=0.94, top=0.98, bottom=0.06, hspace=0.12)
    return to_data_uri(fig)


EVENT_STYLE = {
    "lock_wait": ("|", "#495057", "lock wait logged"),
    "deadlock": ("X", "#c92a2a", "deadlock detected"),
    "statement_timeout": ("v", "#e67700", "statement timeout"),
    "lock_timeout": ("v", "#f08c00", "lock timeout"),
    "too_many_clients": ("s", "#862e9c", "too many clients"),
    "idle_in_tx_timeout": ("d", "#0b7285", "idle-in-tx timeout"),
}


def _server_events(run: VariantRun, ax: Any, origin: float) -> None:
    """Mark what Postgres logged along the bottom of the lock-wait panel, one marker row per kind."""
    log = run.server_log
    if log is None or not log.events:
        return
    for kind, (marker, color, label) in EVENT_STYLE.items():
        times = np.array([e.t - origin for e in log.events if e.kind == kind])
        if len(times):
            ax.scatter(times, np.zeros(len(times)), marker=marker, color=color, s=28, zorder=5,
                       label=f"{label} ({len(times)})", clip_on=False)
    ax.legend(loc="upper left", fontsize=8, ncols=3)


def latency_distributions(latencies: Mapping[str, np.ndarray[Any, Any]]) -> str | None:
    """Empirical CDF of result-POST latency for every variant on one plot (None without data)."""
    if not any(len(v) for v in latencies.values()):
        return None
    fig = Figure(figsize=(9, 4))
    fig.subplots_adjust(left=0.09, right=0.98, top=0.96, bottom=0.13)
    ax = fig.subplots()
    for i, (name, values) in enumerate(latencies.items()):
        if not len(values):
            continue
        x = np.sort(values)
        ax.step(
            x,
            np.arange(1, len(x) + 1) / len(x),
            where="post",
            color=COLORS[i % len(COLORS)],
            label=f"{name} (n={len(x)})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("result POST latency (s), log scale")
    ax.set_ylabel("fraction of POSTs done within")
    for q in (0.5, 0.95):
        ax.axhline(q, color="#adb5bd", lw=0.8, ls=":")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return to_data_uri(fig)


SWEEP_METRICS = (
    ("edges_max", "edges max"),
    ("blocked_max", "blocked max"),
    ("idle_in_tx_max", "idle-in-tx max"),
    ("latency_p95_s", "POST latency p95 (s)"),
    ("post_ok_ratio", "POSTs ok ratio"),
    ("results_accepted_per_s", "results accepted / s"),
)


def sweep(
    summary: Mapping[str, Any], parameter: str, metrics: Sequence[tuple[str, str]] = SWEEP_METRICS
) -> str:
    """Each headline metric against the swept workload parameter, one line per flag set."""
    lines: dict[str, list[tuple[float, dict[str, Any], dict[str, Any]]]] = {}
    for entry in summary["variants"].values():
        x = entry["params"].get(parameter)
        if x is None:
            continue
        label = ", ".join(f"{k}={v}" for k, v in sorted(entry["flags"].items())) or "(no flags)"
        lines.setdefault(label, []).append((float(x), entry["metrics"], entry.get("spread", {})))
    fig = Figure(figsize=(12, 6.5))
    axes = fig.subplots(2, 3).ravel()
    for ax, (metric, title) in zip(axes, metrics, strict=False):
        for i, (label, points) in enumerate(lines.items()):
            points.sort(key=lambda p: p[0])
            xs = [p[0] for p in points if p[1].get(metric) is not None]
            ys = [p[1][metric] for p in points if p[1].get(metric) is not None]
            color = COLORS[i % len(COLORS)]
            ax.plot(xs, ys, marker="o", color=color, label=label)
            spreads = [(p[0], p[2][metric]) for p in points if metric in p[2]]
            if spreads:
                ax.vlines(
                    [s[0] for s in spreads],
                    [s[1][0] for s in spreads],
                    [s[1][1] for s in spreads],
                    color=color,
                    alpha=0.5,
                    lw=3,
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(parameter, fontsize=8)
        ax.set_xticks(sorted({p[0] for points in lines.values() for p in points}))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=min(3, max(1, len(labels))), fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.95, bottom=0.18, hspace=0.45, wspace=0.25)
    return to_data_uri(fig)
