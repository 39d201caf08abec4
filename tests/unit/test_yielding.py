"""Faust's streams give the event loop a round every n events, not before each one
(streams/yielding.py): run on Faust's real stream iterator over a channel."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import faust
import pytest

from streams.yielding import RareYield, yield_every

EVENTS = 1000


@pytest.fixture
def every_100() -> Iterator[None]:
    restore = yield_every(100)
    yield
    restore()


async def _stream_with_a_ticker() -> tuple[list[int], int]:
    """Takes EVENTS values, all waiting at once, from a Faust stream while a task counts the
    rounds the event loop gives it meanwhile."""
    app = faust.App("ofisync-test-yielding", broker="kafka://127.0.0.1:1")  # never connects
    stream = app.stream(app.channel())
    queue = stream.channel.queue  # type: ignore[attr-defined]  # the stream's own channel
    for value in range(EVENTS):
        queue.put_nowait(value)
    rounds, done = 0, False

    async def ticker() -> None:
        nonlocal rounds
        while not done:
            rounds += 1
            await asyncio.sleep(0)

    ticking = asyncio.ensure_future(ticker())
    taken: list[int] = []
    async for value in stream:
        taken.append(value)
        if len(taken) == EVENTS:
            break
    done = True
    await ticking
    return taken, rounds


def test_faust_alone_gives_the_loop_a_round_per_event() -> None:
    taken, rounds = asyncio.run(_stream_with_a_ticker())
    assert taken == list(range(EVENTS))
    assert rounds >= EVENTS


@pytest.mark.usefixtures("every_100")
def test_a_stream_takes_waiting_events_in_bulk_and_still_yields_every_100() -> None:
    taken, rounds = asyncio.run(_stream_with_a_ticker())
    assert taken == list(range(EVENTS))  # every event, in order
    assert EVENTS // 100 - 1 <= rounds <= EVENTS // 100 + 2


def test_only_pauses_are_thinned_and_real_sleeps_still_sleep() -> None:
    slept: list[float] = []

    async def sleep(delay: float, result: object = None) -> object:
        slept.append(delay)
        return result

    async def main() -> None:
        rare = RareYield(3, sleep)
        for _ in range(6):
            await rare(0)
        await rare(0.5)

    asyncio.run(main())
    assert slept == [0, 0, 0.5]
