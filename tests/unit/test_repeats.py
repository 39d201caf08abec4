"""Repeats: a warning that recurs is said the first time, then once every interval with how
often it recurred, each reason on its own clock."""

from __future__ import annotations

from streams.ops.repeats import Repeats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_time_is_said_then_the_repeats_wait_for_the_interval() -> None:
    clock = Clock()
    repeats = Repeats(every_s=60.0, clock=clock)
    assert repeats.due("seller 7", 3) == 3
    clock.now += 59.9
    assert repeats.due("seller 7", 2) is None
    assert repeats.due("seller 7") is None
    clock.now += 0.1  # exactly the interval since it was said: said again
    assert repeats.due("seller 7", 4) == 7  # 2 + 1 unsaid, and these 4


def test_each_reason_keeps_its_own_interval_and_count() -> None:
    clock = Clock()
    repeats = Repeats(every_s=60.0, clock=clock)
    assert repeats.due("seller 7") == 1
    clock.now += 30
    assert repeats.due("branch 2") == 1  # another reason: said at once
    assert repeats.due("seller 7") is None
    clock.now += 30
    assert repeats.due("branch 2") is None  # its own 60 s are not over
    assert repeats.due("seller 7") == 2
