"""Fewer loop rounds per event (worker: how the agents take their events, before decode).

Faust's stream iterator gives the event loop a round (`await asyncio.sleep(0)`) before every
event it takes from its queue. An agent so takes one event per round of the loop, however many
wait, and a round lasts as long as the longest step of any other task. While a sink worked
through a batch, the capture agent took one captured change per step of that work: at 200
changes/s each way, capture fell seconds behind, its queue full of changes fetched within 50 ms
of their commit, on an event loop busy half the time.

`yield_every(n)` makes that pause a real round only every n-th time; the others complete at once.
Nothing else about the streams changes: the same events in the same order, the same
acknowledgements and sensors. An agent whose queue is empty still waits on it, and the loop still
gets a round at least every n events taken (Faust's consumer yields every 100 messages too).

This replaces a module global of Faust's compiled stream iterator, the one Faust uses when it is
built (it is, in the pinned wheels). A Faust upgrade must re-check it; without it, the worker
warns and streams yield per event as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any

log = logging.getLogger("ofisync.yielding")

Sleep = Callable[..., Awaitable[Any]]


class _AtOnce:
    """An awaitable that completes without giving the loop a round."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that ends at once


_AT_ONCE = _AtOnce()


class RareYield:
    """`asyncio.sleep` as the stream iterator calls it, with only every n-th `sleep(0)` real."""

    def __init__(self, every: int, sleep: Sleep = asyncio.sleep) -> None:
        self.every = every
        self._sleep = sleep
        self._skipped = 0

    def __call__(self, delay: float, result: Any = None) -> Awaitable[Any]:
        if delay == 0 and result is None:
            self._skipped += 1
            if self._skipped < self.every:
                return _AT_ONCE
            self._skipped = 0
        return self._sleep(delay, result)


def yield_every(every: int) -> Callable[[], None]:
    """Faust's streams give the loop a round every `every` events (see the module docstring).
    Returns what puts Faust's own pause back."""
    from faust import streams

    try:
        from faust._cython import streams as compiled
    except ImportError:
        compiled = None
    in_use = getattr(streams, "_CStreamIterator", None) is not None
    if not in_use or compiled is None or not callable(getattr(compiled, "sleep", None)):
        log.warning(
            "Faust's compiled stream iterator is not in use: its streams yield to the event loop"
            " per event, which is slower under load (has Faust changed?)"
        )
        return lambda: None
    original = compiled.sleep
    compiled.sleep = RareYield(every, original)

    def restore() -> None:
        compiled.sleep = original

    return restore
