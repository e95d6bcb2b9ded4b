"""Gate thresholds: the ``Threshold`` type, its one-line syntax, and which variants it applies to.

A threshold reads as one line, ``<metric> <op> <limit>``:

    edges_max < 5                        absolute
    latency_p95_s <= 1.2x baseline       relative to the run's baseline variant
    blocked_p95 <= 1x previous ±10%      relative to the same variant of an earlier run (--baseline)
    latency_p95_s <= 1.2x baseline at 95%   on the upper end of the 95 % bootstrap interval of the
                                         difference to the baseline (3+ repetitions of both)
    latency_p95_s{name="/api/orders"} < 1   the requests of one name of your own load (NAMED metrics)

The scenario validates its threshold entries with ``parse_threshold``; the gate evaluates them. Both
import this module, neither imports the other for it.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from contend.metrics import GROWING, METRICS, NAMED, named_metric

Op = Literal["<", "<=", ">", ">=", "=="]
Ref = Literal["baseline", "previous"]

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_SYNTAX = re.compile(
    rf"""^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*
    (?:\{{\s*name\s*=\s*(?P<label>"(?:[^"\\]|\\.)*"|'[^']*')\s*\}}\s*)?
    (?P<op><=|>=|==|<|>)\s*
    (?P<number>{_NUMBER})?\s*
    (?P<times>[x×*])?\s*
    (?P<ref>baseline|previous)?\s*
    (?:(?:±|\+-|\+/-)\s*(?P<tolerance>{_NUMBER})\s*%)?\s*
    (?P<interval>at\s*95\s*%)?\s*$""",
    re.VERBOSE,
)
SYNTAX_HELP = ("'<metric> <op> <number>' or '<metric> <op> <factor>x baseline|previous [±<n>%]'"
               " [at 95%]")


@dataclass(frozen=True)
class Threshold:
    """One parsed threshold: ``metric op factor [x ref]``, loosened by the tolerance."""

    metric: str
    op: Op
    number: float
    ref: Ref | None = None
    tolerance: float = 0.0
    tolerance_abs: float = 0.0
    variants: tuple[str, ...] = ()
    """Variant names or fnmatch patterns it applies to; empty: every variant."""
    text: str | None = None
    """A label that replaces the rendered form (the gate's own "status == ok" check)."""
    interval: bool = False
    """``at 95%``: checked on the far end of the 95 % bootstrap interval of the difference to the
    baseline (the upper end for < and <=, the lower for > and >=), so noise cannot pass it."""
    abort: bool = False
    """Stop the variant the moment this threshold fails (a growing metric under an upper bound:
    ``contend.live``), rather than at its end."""

    def __str__(self) -> str:
        if self.text:
            return self.text
        limit = f"{fmt_number(self.number)}x {self.ref}" if self.ref else fmt_number(self.number)
        text = f"{self.metric} {self.op} {limit}"
        if self.tolerance:
            text += f" ±{fmt_number(self.tolerance * 100)}%"
        if self.tolerance_abs:
            text += f" (±{fmt_number(self.tolerance_abs)} abs)"
        if self.interval:
            text += " at 95%"
        return text

    def applies_to(self, variant: str) -> bool:
        return not self.variants or matches_variant(variant, self.variants)


def matches_variant(name: str, patterns: Iterable[str]) -> bool:
    """Return True when the variant ``name`` matches one of ``patterns`` (fnmatch, case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def parse_threshold(text: str, tolerance: float | None = None, tolerance_abs: float = 0.0,
                    variants: Sequence[str] = (), abort: bool = False) -> Threshold:
    """Return the Threshold a line such as ``latency_p95_s <= 1.2x baseline ±10%`` describes.

    Raises ValueError with a message that says what was expected (the scenario loader adds the line).
    ``abort`` is refused where a failure is not final while the variant runs (see ``abort_error``).
    """
    match = _SYNTAX.match(text)
    if not match:
        raise ValueError(f"cannot read threshold {text!r}; expected {SYNTAX_HELP}")
    metric, number = match["metric"], match["number"]
    ref = cast(Ref | None, match["ref"])
    if match["label"] is not None:
        if metric not in NAMED:
            if metric not in METRICS:
                raise ValueError(f"unknown metric {metric!r}{did_you_mean(metric, NAMED)}")
            raise ValueError(f"{metric!r} has no per-name figures; per name: {', '.join(NAMED)}")
        label = match["label"]
        metric = named_metric(metric, json.loads(label) if label.startswith('"') else label[1:-1])
    elif metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}{did_you_mean(metric, METRICS)}")
    if ref is None and (number is None or match["times"]):
        raise ValueError(f"threshold {text!r} needs a number, or '<factor>x baseline|previous'")
    if ref is not None and number is not None and not match["times"]:
        raise ValueError(f"threshold {text!r}: write the factor as '{number}x {ref}'")
    if match["tolerance"] is not None and tolerance is not None:
        raise ValueError(f"threshold {text!r} gives a tolerance twice (in the text and as a key)")
    if match["tolerance"] is not None:
        tolerance = float(match["tolerance"]) / 100
    if (tolerance or 0) < 0 or tolerance_abs < 0:
        raise ValueError("a tolerance cannot be negative")
    interval = match["interval"] is not None
    if interval and (ref != "baseline" or match["op"] == "=="):
        raise ValueError(f"threshold {text!r}: 'at 95%' needs '<, <=, > or >= <factor>x baseline' "
                         "(the interval is of the difference to the baseline)")
    threshold = Threshold(metric=metric, op=cast(Op, match["op"]), number=float(number) if number else 1.0,
                          ref=ref, tolerance=tolerance or 0.0, tolerance_abs=tolerance_abs,
                          variants=tuple(variants), interval=interval, abort=abort)
    if abort and (why := abort_error(threshold)):
        raise ValueError(f"threshold {text!r} cannot abort: {why}")
    return threshold


def abort_error(t: Threshold) -> str | None:
    """Say why ``t`` cannot stop a variant early, None when it can.

    A failure is final mid-variant only for a metric that can only grow while the variant runs (a
    maximum, a count, the longest wait: ``GROWING``) held under an absolute upper bound.
    """
    if t.metric not in GROWING:
        return (f"{t.metric} is known only at the end of the variant (a ratio, percentile or rate); "
                f"abort needs a maximum or a count, e.g. {', '.join(GROWING[:2])}, timeouts")
    if t.op not in ("<", "<="):
        return f"{t.metric} can still grow past the limit, so only < or <= fail for good"
    if t.ref is not None:
        return "abort needs an absolute limit, not one relative to another variant or run"
    return None


def fmt_number(x: float | None) -> str:
    """Return ``x`` as the gate prints it: ``-`` for none, 4 significant digits, integers bare."""
    if x is None:
        return "-"
    return f"{x:.4g}" if isinstance(x, float) and not float(x).is_integer() else str(int(x))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the nearest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
