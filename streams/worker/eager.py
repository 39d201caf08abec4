"""Eager hand-over (worker, capture → decode): how a fetched message reaches the agents.

Faust's consumer hands every message to the conductor through mode's `Service.wait_first`, racing
the hand-over against a rebalance (`suspend_flow`) and the consumer stopping. That race costs four
asyncio tasks and an `asyncio.wait` per message, and the hand-over almost never waits: it puts the
message in its agent's batcher (streams/door.py) and returns. Measured on a catch-up of 30,000
changes, the race took a third of the worker's CPU.

`hand_over_eagerly` wraps the consumer's `wait_first`: the hand-over is run up to its first real
wait, in place. When it finishes there (the usual case) nothing more is needed. When it waits (a
full batcher, flow control during a rebalance), the hand-over, already started, goes to the
original race, which then behaves exactly as before. This is what Python 3.12's eager tasks do;
ofisync runs on 3.11.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from mode.services import WaitResults

log = logging.getLogger("ofisync.eager")

WaitFirst = Callable[..., Awaitable[WaitResults]]


class Started:
    """A coroutine that has already run up to its first wait, as an awaitable that carries on
    from there (the `yield from` of a coroutine whose first step was taken by hand)."""

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:  # cancellation included: it goes to the coroutine
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting_on = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def eager_wait_first(original: WaitFirst) -> WaitFirst:
    """`original` (a Service's `wait_first`), with a coroutine given first run in place."""

    async def wait_first(*coros: Any, timeout: Any = None) -> WaitResults:
        if timeout is not None or not coros or not inspect.iscoroutine(coros[0]):
            return await original(*coros, timeout=timeout)
        first, others = coros[0], coros[1:]
        try:
            waiting_on = first.send(None)
        except StopIteration as stop:
            _close(others)
            return WaitResults([first], [stop.value], False)
        except BaseException:
            _close(others)
            raise
        return await original(Started(first, waiting_on), *others)

    return wait_first


def _close(coros: tuple[Any, ...]) -> None:
    for coro in coros:
        if inspect.iscoroutine(coro):
            coro.close()  # never started: closing it only silences "never awaited"


def hand_over_eagerly(consumer: Any) -> bool:
    """Wraps `consumer.wait_first`; False (and a warning) when Faust no longer has one."""
    original = getattr(consumer, "wait_first", None)
    if original is None or not inspect.iscoroutinefunction(original):
        log.warning("Faust's consumer has no wait_first to wrap; messages go the slow way")
        return False
    consumer.wait_first = eager_wait_first(original)
    return True
