"""The sinks' own event loop: work runs there, on another thread, and its result, its error or
its cancellation comes back to the worker's loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from streams.sink_loop import SinkLoop


@pytest.fixture
def sinks() -> Iterator[SinkLoop]:
    own = SinkLoop("test-sinks")
    yield own
    own.close()


async def _where() -> tuple[str, asyncio.AbstractEventLoop]:
    await asyncio.sleep(0)
    return threading.current_thread().name, asyncio.get_running_loop()


def test_work_runs_on_the_sinks_loop_and_its_result_comes_back(sinks: SinkLoop) -> None:

    async def scenario() -> None:
        name, loop = await sinks.run(_where())
        assert name == "test-sinks"
        assert loop is sinks.loop is not asyncio.get_running_loop()

    asyncio.run(scenario())


def test_an_error_in_the_work_is_raised_to_the_caller(sinks: SinkLoop) -> None:

    async def fails() -> None:
        raise LookupError("the database said no")

    async def scenario() -> None:
        with pytest.raises(LookupError, match="the database said no"):
            await sinks.run(fails())

    asyncio.run(scenario())


def test_cancelling_the_caller_cancels_the_work(sinks: SinkLoop) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def waits() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def scenario() -> None:
        caller = asyncio.ensure_future(sinks.run(waits()))
        while not started.is_set():
            await asyncio.sleep(0.01)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller

    asyncio.run(scenario())
    assert cancelled.wait(5), "the sink's coroutine was not cancelled"
