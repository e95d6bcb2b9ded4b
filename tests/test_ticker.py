"""The sampler's schedule under a CPU budget: the interval stretches when ticks cost too much, never
below 1 Hz, and comes back when the cost falls; the stretches are found again from the tick records."""

from __future__ import annotations

from contend.sample.ticker import Ticker, describe_episode, lowered_episodes


def run(ticker: Ticker, now: list[float], cpu_s: float, seconds: float) -> list[float]:
    """Tick for ``seconds`` of the fake clock at ``cpu_s`` a tick; return the intervals ticked at."""
    intervals = []
    end = now[0] + seconds
    while now[0] < end:
        intervals.append(ticker.interval_s)
        ticker.spend(cpu_s)
        now[0] += ticker.wait_s()
    return intervals


def test_the_interval_follows_the_budget_and_comes_back() -> None:
    now = [0.0]
    ticker = Ticker(0.1, clock=lambda: now[0], cpu_budget_pct=3.0)
    # 2 ms a tick at 10 Hz is 2 % of a core: within budget.
    assert set(run(ticker, now, 0.002, 3.0)) == {0.1}
    # 7.5 ms a tick would be 7.5 %: the interval stretches to 7.5 / 3 x 0.1 = 0.25 s (4 Hz).
    assert run(ticker, now, 0.0075, 5.0)[-1] == 0.25
    # 50 ms a tick would need 1.67 s: never slower than 1 Hz.
    assert run(ticker, now, 0.050, 5.0)[-1] == 1.0
    # The cost falls: back to 10 Hz.
    assert run(ticker, now, 0.001, 5.0)[-1] == 0.1


def test_without_a_budget_the_interval_stays() -> None:
    now = [0.0]
    ticker = Ticker(0.1, clock=lambda: now[0])
    assert set(run(ticker, now, 1.0, 3.0)) == {0.1}


def test_an_interval_asked_slower_than_1_hz_is_kept() -> None:
    now = [0.0]
    ticker = Ticker(2.0, clock=lambda: now[0], cpu_budget_pct=3.0)
    assert set(run(ticker, now, 0.5, 20.0)) == {2.0}


def test_lowered_episodes_say_when_and_how_far() -> None:
    ticks = [{"t": 100.0 + i * 0.1, "interval_s": 0.1, "backends": 900} for i in range(120)]
    ticks += [{"t": 112.0 + i * 0.25, "interval_s": 0.25, "backends": 1050} for i in range(115)]
    ticks += [{"t": 141.0 + i * 0.1, "interval_s": 0.1, "backends": 400} for i in range(10)]
    ticks.append({"t": 142.0})  # a record of an older contend: no interval
    episodes = lowered_episodes(ticks)
    assert len(episodes) == 1
    assert describe_episode(episodes[0], since=100.0) == (
        "10 Hz lowered to 4 Hz from 12.0 s to 40.5 s: 1,050 backends")
    assert lowered_episodes(ticks[:120]) == []
