"""Command partitioning: an explicit partition is where Kafka's keyed send puts the key."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from streams.topics import partition_of


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=1, max_value=64))
def test_a_command_goes_to_the_partition_a_keyed_send_would_choose(key: bytes, n: int) -> None:
    every = list(range(n))
    assert partition_of(key, n) == DefaultPartitioner()(key, every, every)
