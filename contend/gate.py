"""Thresholds and baselines to a verdict: the CI gate on contention.

A threshold (``contend.thresholds``) reads as one line, ``<metric> <op> <limit>``:

    edges_max < 5                        absolute
    latency_p95_s <= 1.2x baseline       relative to the run's baseline variant
    blocked_p95 <= 1x previous ±10%      relative to the same variant of an earlier run (--baseline)
    latency_p95_s <= 1.2x baseline at 95%   on the upper end of the 95 % bootstrap interval of the
                                         difference to the baseline (3+ repetitions of both)

A tolerance (``±10%``, or the ``tolerance``/``tolerance_abs`` keys of the scenario) loosens the limit
in the passing direction by ``max(|limit| * tolerance, tolerance_abs)``, the noise allowance teams
hand-roll as "p95 < max(1.3 x baseline, baseline + 50 ms)" (field notes, k6 section).

``evaluate`` is pure (dicts in, ``GateResult`` out); the renderers return text; ``gate_run`` reads a
run folder; ``apply_gate`` also writes JUnit and the step summary, ``raise_if_failed`` turns a failed
verdict into ``ThresholdsFailed`` (exit code 1). The CLI prints the table and maps the error.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contend.errors import ConfigError, ThresholdsFailed
from contend.scenario import load_scenario
from contend.thresholds import (
    SYNTAX_HELP,
    Threshold,
    did_you_mean,
    matches_variant,
    parse_threshold,
)
from contend.thresholds import (
    fmt_number as _fmt,
)

__all__ = [  # the threshold names are re-exported: they were defined here before contend.thresholds
    "SYNTAX_HELP",
    "Check",
    "GateResult",
    "Threshold",
    "Verdict",
    "apply_gate",
    "did_you_mean",
    "evaluate",
    "gate_run",
    "matches_variant",
    "parse_threshold",
    "raise_if_failed",
    "read_summary",
    "render_junit",
    "render_markdown",
    "render_table",
]

Verdict = Literal["pass", "fail", "skip"]

@dataclass(frozen=True)
class Check:
    """One threshold applied to one variant."""

    variant: str
    threshold: Threshold
    verdict: Verdict
    value: float | None = None
    limit: float | None = None
    """The limit after the ``x ref`` factor, before the tolerance."""
    reason: str | None = None


@dataclass(frozen=True)
class GateResult:
    scenario: str
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.verdict == "fail")

    @property
    def passed(self) -> bool:
        return not self.failed


def evaluate(summary: Mapping[str, Any],
             thresholds: Mapping[str, Sequence[Threshold]] | Sequence[Threshold],
             baseline_summary: Mapping[str, Any] | None = None) -> GateResult:
    """Return the verdict of every threshold on every variant of ``summary`` (summary.json's shape).

    ``thresholds`` is either one list for all variants (each filtered by its ``variants`` patterns)
    or a mapping variant name -> its thresholds (``Scenario.thresholds_by_variant()``); a variant
    named there but absent from the summary fails. A variant whose status is ``failed`` fails every
    threshold (and one ``status`` check when it has none). ``baseline_summary`` is an earlier run's
    summary.json, needed by ``x previous`` thresholds (skipped without it).
    """
    variants: Mapping[str, Any] = summary.get("variants") or {}
    if isinstance(thresholds, Mapping):
        per_variant = {name: list(ts) for name, ts in thresholds.items()}
        for name in variants:
            per_variant.setdefault(name, [])
    else:
        per_variant = {name: [t for t in thresholds if t.applies_to(name)] for name in variants}
    checks: list[Check] = []
    for name, ts in per_variant.items():
        entry = variants.get(name)
        if entry is None:
            checks += [Check(name, t, "fail", reason="variant missing from summary.json") for t in ts]
            continue
        if entry.get("status") == "failed":
            why = f"variant failed: {entry.get('reason') or 'no reason recorded'}"
            ts = ts or [Threshold("status", "==", 0.0, text="status == ok")]
            checks += [Check(name, t, "fail", reason=why) for t in ts]
            continue
        checks += [_stopping(_check(name, t, summary, baseline_summary), entry.get("stopped")) for t in ts]
    return GateResult(scenario=str(summary.get("scenario", "")), checks=tuple(checks))


def _check(name: str, t: Threshold, summary: Mapping[str, Any],
           previous: Mapping[str, Any] | None) -> Check:
    value = _metric(summary, name, t.metric)
    if value is None:
        return Check(name, t, "fail", reason=f"metric {t.metric} is missing or not a number")
    limit = t.number
    if t.ref == "baseline":
        base_name = summary.get("baseline")
        if base_name == name:
            return Check(name, t, "skip", value, reason="this is the baseline variant")
        base_entry = (summary.get("variants") or {}).get(base_name) or {}
        if base_entry.get("status") == "failed":
            return Check(name, t, "fail", value, reason=f"baseline variant {base_name!r} failed")
        base = _metric(summary, str(base_name), t.metric)
        if base is None:
            return Check(name, t, "fail", value,
                         reason=f"baseline variant {base_name!r} has no value for {t.metric}")
        limit *= base
        if t.interval:
            delta = ((summary.get("variants") or {}).get(name) or {}).get("deltas", {}).get(t.metric) or {}
            ci = delta.get("ci")
            if not ci or None in ci:
                return Check(name, t, "fail", value, limit, reason="no 95 % interval: it needs 3 or more "
                             "repetitions of this variant and of the baseline")
            # The far end of the interval: the value the variant may have, given its spread.
            value = base + (ci[1] if t.op in ("<", "<=") else ci[0])
    elif t.ref == "previous":
        if previous is None:
            return Check(name, t, "skip", value, reason="no earlier run given with --baseline")
        base = _metric(previous, name, t.metric)
        if base is None:
            return Check(name, t, "fail", value,
                         reason=f"the earlier run has no value of {t.metric} for variant {name!r}")
        limit *= base
    slack = max(abs(limit) * t.tolerance, t.tolerance_abs)
    ok = {
        "<": value < limit + slack,
        "<=": value <= limit + slack,
        ">": value > limit - slack,
        ">=": value >= limit - slack,
        "==": abs(value - limit) <= slack or math.isclose(value, limit, rel_tol=1e-9, abs_tol=1e-12),
    }[t.op]
    return Check(name, t, "pass" if ok else "fail", value, limit)


def _stopping(check: Check, stopped: Mapping[str, Any] | None) -> Check:
    """Return the check of the threshold that stopped its variant (``abort: true``) as failed, with when.

    The variant's figures end where it stopped; the value is the larger of the recorded one and the
    one seen live (the live figures count a tick from the load phase's start, the analysis from the
    first request).
    """
    if not stopped or stopped.get("threshold") != str(check.threshold):
        return check
    values = [v for v in (check.value, stopped.get("value")) if isinstance(v, int | float)]
    reason = f"stopped the variant at {float(stopped.get('at_s') or 0):.1f} s"
    return Check(check.variant, check.threshold, "fail", max(values) if values else None,
                 check.limit if check.limit is not None else check.threshold.number, reason)


def _metric(summary: Mapping[str, Any], variant: str, metric: str) -> float | None:
    entry = (summary.get("variants") or {}).get(variant) or {}
    value = (entry.get("metrics") or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def render_table(result: GateResult) -> list[str]:
    """Return the terminal table: one line per check, then a verdict line."""
    rows = [("variant", "threshold", "value", "limit", "verdict")]
    for c in result.checks:
        verdict = c.verdict.upper() + (f" ({c.reason})" if c.reason else "")
        rows.append((c.variant, str(c.threshold), _fmt(c.value), _fmt(c.limit), verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
             for r in rows]
    return [*lines, _headline(result)]


def render_markdown(result: GateResult) -> str:
    """Return a markdown summary (for $GITHUB_STEP_SUMMARY or a pull request)."""
    icon = {"pass": "✅", "fail": "❌", "skip": "⏭️"}
    out = [f"### contend gate: {result.scenario or 'run'}", "", _headline(result), "",
           "| | variant | threshold | value | limit | note |", "|---|---|---|---|---|---|"]
    for c in result.checks:
        cells = [icon[c.verdict], c.variant, f"`{c.threshold}`", _fmt(c.value), _fmt(c.limit),
                 c.reason or ""]
        out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(out) + "\n"


def render_junit(result: GateResult) -> str:
    """Return JUnit XML: one testsuite, one testcase per threshold per variant."""
    suite = ET.Element("testsuite", name=f"contend gate {result.scenario}".strip(),
                       tests=str(len(result.checks)), failures=str(len(result.failed)),
                       errors="0", skipped=str(sum(c.verdict == "skip" for c in result.checks)))
    for c in result.checks:
        case = ET.SubElement(suite, "testcase", classname=f"contend.{result.scenario}.{c.variant}",
                             name=str(c.threshold))
        detail = f"value {_fmt(c.value)}, limit {_fmt(c.limit)}" + (f": {c.reason}" if c.reason else "")
        if c.verdict == "fail":
            ET.SubElement(case, "failure", message=detail, type="ThresholdFailed").text = detail
        elif c.verdict == "skip":
            ET.SubElement(case, "skipped", message=c.reason or "")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def gate_run(run_dir: Path, baseline: Path | None = None) -> GateResult:
    """Return the verdict for a run folder: thresholds of its scenario.yaml on its summary.json."""
    summary = read_summary(run_dir / "summary.json")
    scenario = load_scenario(run_dir / "scenario.yaml")
    if baseline is not None and baseline.is_dir():
        baseline = baseline / "summary.json"
    previous = read_summary(baseline) if baseline is not None else None
    return evaluate(summary, scenario.thresholds_by_variant(), previous)


def apply_gate(run_dir: Path, baseline: Path | None = None, *, junit: Path | None = None,
               step_summary: Path | None = None) -> GateResult:
    """Return the verdict for a run folder, having written it as JUnit XML to ``junit`` and appended
    it as markdown to ``step_summary`` (GitHub's $GITHUB_STEP_SUMMARY), when given."""
    result = gate_run(run_dir, baseline)
    if junit is not None:
        junit.write_text(render_junit(result))
    if step_summary is not None:
        with step_summary.open("a") as summary:
            summary.write(render_markdown(result))
    return result


def raise_if_failed(result: GateResult) -> None:
    """Raise ThresholdsFailed (exit code 1) when a threshold failed."""
    if not result.passed:
        raise ThresholdsFailed(f"{len(result.failed)} of {len(result.checks)} thresholds failed")


def read_summary(path: Path) -> dict[str, Any]:
    """Return a summary.json as a dict; ConfigError when it is missing or not a summary."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file",
                          hint="give a run folder written by `contend run` (it holds summary.json)"
                          ) from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict):
        raise ConfigError(f"{path}: not a contend summary.json (no 'variants' mapping)",
                          hint="the keys of summary.json are in docs/records.md")
    return data


def _headline(result: GateResult) -> str:
    n, bad = len(result.checks), len(result.failed)
    skipped = sum(c.verdict == "skip" for c in result.checks)
    tail = f", {skipped} skipped" if skipped else ""
    if bad:
        return f"FAILED: {bad} of {n} thresholds failed{tail}"
    return f"PASSED: {n - skipped} of {n} thresholds passed{tail}"
