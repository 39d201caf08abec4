"""Command partitioning: a command goes to the partition number of the change it came from."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.core.topics import command_partition


@given(st.integers(min_value=1, max_value=64))
def test_with_equal_counts_a_command_keeps_its_changes_partition(n: int) -> None:
    # Faust assigns equal partition numbers of topics with equal counts to one worker: the
    # worker that captured a change applies its command.
    assert [command_partition(p, n) for p in range(n)] == list(range(n))


@given(st.integers(min_value=0, max_value=255), st.integers(min_value=1, max_value=64))
def test_any_captured_partition_maps_to_one_existing_command_partition(p: int, m: int) -> None:
    # More captured partitions than command partitions (topics grown apart) still map onto them.
    assert 0 <= command_partition(p, m) < m
