"""Command batches stay under Kafka's message size limit, in order; a worker reads back the
frames it sent without decoding them, and gets the same commands."""

from __future__ import annotations

from streams.core import codec
from streams.core.model import Command, CommandOp, FieldValue, Side
from streams.worker.app import MAX_FRAME_BYTES, _frames


def _command(n: int, size: int) -> Command:
    return Command(
        Side.ERP, "client", CommandOp.UPSERT, str(n), None, n, n, True,
        (FieldValue("notes", None, "x" * size, True),),
    )  # fmt: skip


def test_a_batch_too_big_for_one_message_is_split_and_keeps_its_order() -> None:
    commands = [_command(n, 100_000) for n in range(20)]  # about 2 MB in all
    frames = _frames(commands)
    assert len(frames) > 1
    assert all(len(f) <= MAX_FRAME_BYTES for f, _ in frames)
    assert [c for f, _ in frames for c in codec.decode_all(f)] == commands
    assert all(codec.decode_all(f) == list(held) for f, held in frames)


def test_a_small_batch_is_one_message() -> None:
    commands = [_command(n, 100) for n in range(50)]
    assert len(_frames(commands)) == 1


def test_a_sent_frame_reads_back_as_its_commands_once_then_decodes() -> None:
    recent = codec.RecentFrames()
    [(frame, held)] = _frames([_command(n, 100) for n in range(10)])
    recent.remember(frame, held)
    first = recent.decode_all(bytes(bytearray(frame)))  # a copy, as a consumer reads it
    assert first == list(held) and all(a is b for a, b in zip(first, held, strict=True))
    assert len(recent) == 0
    again = recent.decode_all(frame)
    assert again == list(held) and all(a is not b for a, b in zip(again, held, strict=True))


def test_recent_frames_forget_the_oldest_past_their_size() -> None:
    frames = [_frames([_command(n, 1_000)])[0] for n in range(10)]
    recent = codec.RecentFrames(max_bytes=sum(len(f) for f, _ in frames[-3:]))
    for frame, held in frames:
        recent.remember(frame, held)
    assert len(recent) == 3
    assert recent.decode_all(frames[-1][0])[0] is frames[-1][1][0]
    assert recent.decode_all(frames[0][0])[0] is not frames[0][1][0]
