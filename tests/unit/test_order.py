"""A batch's commands go to the sink with new parents first (streams/core/order.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.apply.parking import record_key
from streams.core.model import Command, CommandOp, Side
from streams.core.order import parents_first


def _cmd(entity: str, key: int, op: CommandOp = CommandOp.UPSERT, lsn: int = 0) -> Command:
    return Command(Side.CRM, entity, op, str(key), None, lsn, lsn, True, ())


def test_a_file_and_its_client_go_ahead_of_the_segments_that_came_first() -> None:
    segment, file, client = _cmd("segment", 1), _cmd("file", 2), _cmd("client", 3)
    other_segment = _cmd("segment", 4)
    assert parents_first([segment, file, other_segment, client]) == [
        client, file, segment, other_segment,
    ]  # fmt: skip


def test_a_record_with_a_delete_keeps_its_place_and_its_order() -> None:
    segment = _cmd("segment", 1)
    created, deleted = _cmd("file", 2, lsn=1), _cmd("file", 2, CommandOp.DELETE, lsn=2)
    new_file = _cmd("file", 3)
    assert parents_first([segment, created, deleted, new_file]) == [
        new_file, segment, created, deleted,
    ]  # fmt: skip


def test_restores_and_zeroing_are_never_moved_ahead() -> None:
    zero = _cmd("file", 5, CommandOp.ZERO_PLACEHOLDERS)
    restore = _cmd("client", 6, CommandOp.RESTORE)
    batch = [zero, _cmd("segment", 1), restore]
    assert parents_first(batch) == batch


def test_a_batch_without_parents_is_left_as_it_is() -> None:
    batch = [_cmd("segment", n) for n in range(5)] + [_cmd("document", 9)]
    assert parents_first(batch) == batch


commands = st.lists(
    st.builds(
        _cmd,
        st.sampled_from(["client", "file", "segment", "document"]),
        st.integers(0, 4),
        st.sampled_from(list(CommandOp)),
        st.integers(0, 10**6),
    ),
    max_size=30,
)


@given(commands)
def test_every_command_stays_and_each_record_keeps_its_order(batch: list[Command]) -> None:
    ordered = parents_first(batch)
    assert sorted(map(id, ordered)) == sorted(map(id, batch))
    for key in {record_key(c) for c in batch}:
        assert [c for c in ordered if record_key(c) == key] == [
            c for c in batch if record_key(c) == key
        ]
