"""Parking: how long a waiting change waits before its next attempt, and when a release
leaves more to release."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.apply.parking import (
    FIRST_RETRY_S,
    MAX_DOUBLINGS,
    MAX_PARENT_RETRY_S,
    MAX_RETRY_S,
    RELEASE_LIMIT,
    Waiting,
    _delays,
    filled,
    retry_cap,
    retry_delay,
)
from streams.core.model import Command, CommandOp, Side


def test_the_first_retry_comes_soon() -> None:
    assert retry_delay(0) == FIRST_RETRY_S


@given(
    st.integers(min_value=0, max_value=10_000), st.sampled_from([MAX_RETRY_S, MAX_PARENT_RETRY_S])
)
def test_retries_back_off_doubling_up_to_a_cap(attempts: int, cap: float) -> None:
    assert retry_delay(attempts, cap) <= retry_delay(attempts + 1, cap) <= cap
    if retry_delay(attempts, cap) < cap:
        assert retry_delay(attempts + 1, cap) == min(2 * retry_delay(attempts, cap), cap)


@given(st.integers(min_value=0, max_value=10_000))
def test_the_database_picks_its_back_off_from_the_same_curve(attempts: int) -> None:
    # The UPDATE of a parked change still waiting reads _delays[least(attempts, MAX_DOUBLINGS)].
    for cap in (MAX_RETRY_S, MAX_PARENT_RETRY_S):
        assert _delays(cap)[min(attempts, MAX_DOUBLINGS)] == retry_delay(attempts, cap)


def test_a_change_behind_its_parent_backs_off_longer_than_a_refusal() -> None:
    behind_parent = Waiting("file", "42", "file 42 is not linked in OfiViaje yet")
    refused = Waiting(None, None, "the CRM refused document 7: too large")
    assert retry_cap(behind_parent) == MAX_PARENT_RETRY_S
    assert retry_cap(None) == MAX_PARENT_RETRY_S  # behind an earlier change of its record
    assert retry_cap(refused) == MAX_RETRY_S < MAX_PARENT_RETRY_S
    assert retry_delay(20, retry_cap(behind_parent)) == MAX_PARENT_RETRY_S


def _segment(key: int, lsn: int = 0) -> Command:
    return Command(Side.CRM, "segment", CommandOp.UPSERT, str(key), None, lsn, 0, True, ())


def test_a_release_is_full_when_it_took_as_many_records_as_it_may() -> None:
    full = [(i, _segment(i)) for i in range(RELEASE_LIMIT)]
    assert filled(full)
    assert not filled(full[:-1])
    # Many changes of one record are one record.
    assert not filled([(i, _segment(7, lsn=i)) for i in range(RELEASE_LIMIT)])
