"""The drain's stall rule: busy workers with nothing moving end the wait; slow progress does not."""

from __future__ import annotations

from collections.abc import Iterator

from contend.sample.drain import wait_quiet


class Script:
    """A probe that plays a list of (idle, marker) looks, one per second of a fake clock."""

    def __init__(self, looks: list[tuple[bool, object]]) -> None:
        self.now = 0.0
        self.looks: Iterator[tuple[bool, object]] = iter(looks)

    def clock(self) -> float:
        return self.now

    def probe(self) -> tuple[bool, object]:
        self.now += 1.0
        return next(self.looks)


def test_busy_with_nothing_moving_for_stall_s_is_stalled() -> None:
    # Progress for five looks, then the same busy state: stalled ten seconds after the last change.
    script = Script([(False, n) for n in range(5)] + [(False, 4)] * 100)
    end, timed_out, stalled = wait_quiet(script.probe, timeout_s=100, interval_s=0, clock=script.clock,
                                         stall_s=10)
    assert (stalled, timed_out) == (True, False)
    assert end == 14.0  # last change seen at 4 s


def test_slow_progress_runs_into_the_timeout_not_the_stall_rule() -> None:
    script = Script([(False, n // 5) for n in range(200)])  # a new marker every 5 looks
    _, timed_out, stalled = wait_quiet(script.probe, timeout_s=60, interval_s=0, clock=script.clock,
                                         stall_s=10)
    assert (stalled, timed_out) == (False, True)


def test_quiet_idle_ends_the_drain_as_before() -> None:
    script = Script([(False, 1), (False, 2), (True, 3), (True, 3), (True, 3), (True, 3)])
    end, timed_out, stalled = wait_quiet(script.probe, timeout_s=60, quiet_s=2, interval_s=0,
                                         clock=script.clock, stall_s=10)
    assert (end, timed_out, stalled) == (2.0, False, False)
