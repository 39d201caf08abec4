"""Parking: how long a waiting change waits before its next attempt."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.parking import FIRST_RETRY_S, MAX_RETRY_S, retry_delay


def test_the_first_retry_comes_soon() -> None:
    assert retry_delay(0) == FIRST_RETRY_S


@given(st.integers(min_value=0, max_value=10_000))
def test_retries_back_off_doubling_up_to_a_cap(attempts: int) -> None:
    assert retry_delay(attempts) <= retry_delay(attempts + 1) <= MAX_RETRY_S
    if retry_delay(attempts) < MAX_RETRY_S:
        assert retry_delay(attempts + 1) == min(2 * retry_delay(attempts), MAX_RETRY_S)
