"""One definition per statistic: the quantile, the timeout classification, the bootstrap interval."""

from __future__ import annotations

import random

import numpy as np
import pytest

from contend.stats import bootstrap_interval, is_timeout, quantile


def test_quantile_is_numpys_linear_interpolation() -> None:
    rng = random.Random(3)
    for n in (1, 2, 5, 37):
        values = [rng.uniform(0, 10) for _ in range(n)]
        for q in (0.0, 0.5, 0.95, 0.99, 1.0):
            assert quantile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))
    assert quantile([], 0.5) is None


def test_timeouts_are_any_error_saying_timeout() -> None:
    errors = ("ReadTimeout", "ConnectTimeout", "statement timeout", "HTTP 500", None)
    assert [is_timeout(e) for e in errors] == [True, True, True, False, False]


def _repetitions(center: float, spread: float, n: int, rng: random.Random) -> list[float]:
    return [rng.gauss(center, spread) for _ in range(n)]


def test_bootstrap_interval_tells_a_shift_beyond_the_spread_from_noise() -> None:
    rng = random.Random(7)
    base = _repetitions(10.0, 0.5, 5, rng)
    shifted = _repetitions(14.0, 0.5, 5, rng)  # 8 standard deviations away
    low, high = bootstrap_interval(shifted, base)
    assert 0 < low < 4.0 < high  # excludes 0, holds the true difference
    same = _repetitions(10.0, 0.5, 5, rng)
    low, high = bootstrap_interval(same, base)
    assert low < 0 < high  # the same distribution: not distinguishable


def test_bootstrap_interval_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    # Known spread: repetitions drawn from N(10, 1) and N(11, 1); the interval of the difference of
    # medians should hold 1.0 in most runs (the percentile bootstrap is a little narrow for 7 values).
    rng = random.Random(11)
    hits = 0
    trials = 100
    for seed in range(trials):
        low, high = bootstrap_interval(_repetitions(11.0, 1.0, 7, rng), _repetitions(10.0, 1.0, 7, rng),
                                       resamples=400, seed=seed)
        hits += low <= 1.0 <= high
    assert hits >= 80


def test_bootstrap_interval_is_reproducible() -> None:
    assert bootstrap_interval([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) == bootstrap_interval([1.0, 2.0, 3.0],
                                                                                       [2.0, 3.0, 4.0])


def test_contend_load_and_summary_json_give_the_same_p95_and_timeouts(tmp_path) -> None:
    import json

    from contend.analysis import load_variant, variant_metrics
    from contend.load.records import LoadSummary

    rng = random.Random(5)
    records = []
    for i in range(40):
        t0 = 100.0 + i * 0.1
        timed_out = i % 9 == 0
        took = 30.0 if timed_out else rng.uniform(0.1, 2.0)
        records.append({"t0": t0, "t1": t0 + took, "kind": "result", "status": 0 if timed_out else 200,
                        "sent": 1, "recv": 1, "error": "ReadTimeout" if timed_out else None, "job": 1,
                        "results": 0 if timed_out else 5, "tasks": 0, "dup_tasks": 0, "dup_results": 0,
                        "worker": "w0-u1", "wave": None})
    (tmp_path / "load").mkdir()
    (tmp_path / "load" / "requests-w0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    table = LoadSummary.from_records(records)
    metrics = variant_metrics(load_variant(tmp_path))
    assert table.kinds["result"].p95_s == pytest.approx(metrics["latency_p95_s"])
    assert table.kinds["result"].p50_s == pytest.approx(metrics["latency_p50_s"])
    assert table.timeouts == metrics["timeouts"] == 5
