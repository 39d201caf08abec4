"""Command batches stay under Kafka's message size limit, in order."""

from __future__ import annotations

from streams import codec
from streams.model import Command, CommandOp, FieldValue, Side
from streams.worker import MAX_FRAME_BYTES, _frames


def _command(n: int, size: int) -> Command:
    return Command(
        Side.ERP, "client", CommandOp.UPSERT, str(n), None, n, n, True,
        (FieldValue("notes", None, "x" * size, True),),
    )  # fmt: skip


def test_a_batch_too_big_for_one_message_is_split_and_keeps_its_order() -> None:
    commands = [_command(n, 100_000) for n in range(20)]  # about 2 MB in all
    frames = _frames(commands)
    assert len(frames) > 1
    assert all(len(f) <= MAX_FRAME_BYTES for f in frames)
    assert [c for f in frames for c in codec.decode_all(f)] == commands


def test_a_small_batch_is_one_message() -> None:
    commands = [_command(n, 100) for n in range(50)]
    assert len(_frames(commands)) == 1
