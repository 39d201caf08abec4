"""Natural batching (worker): between a Faust agent and the work it feeds.

Faust's `take_events` waits out its whole window for every batch, and gathers the next batch
only once the body returns: a batch is what arrives in one window. A short window made many
small batches under load, each paying a transaction's or a send's fixed cost; a long one made
every change wait at light load. Here the agent hands its events over and goes back for more at
once, and one task works through what has gathered, all of it (up to a limit) in one go, as soon
as the batch before it is done, and at most every `min_interval_s`: a change that arrives alone
goes alone and at once, and under load what arrives meanwhile joins the next batch, so the fixed
cost of a batch (a transaction of a dozen statements, a send per partition) is shared.

With a `prepare` step (decoding, say: work that needs no database), the batcher prepares the
next batch while the one before it is still being worked on, so the worker's own processing
overlaps the database's; the work itself still goes one batch at a time, in order. Both share
one event loop: a prepare step goes through its items `in_turns`, so the work's next statement
is sent as soon as the database has answered the one before, not once the whole next batch is
prepared (a batch of 2,000 captured changes takes the loop for about 200 ms).

Items are handed to `done` (which acknowledges them) in the order they came, and only after
their work: offsets still move only past committed work, and a record's changes keep their order.
`put_many` never waits: it is called from the consumer's loop, which feeds every agent, and a
batcher whose work waits (its database is down) must not hold the others back. Past
`max_waiting` items it says so (`on_full`, which pauses fetching its topics), and once half of
them are worked through it says that too (`on_room`). Should the batcher itself stop on an error
(in `done`, say), `on_failure` hears of it: left alone, its agent would stall unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

log = logging.getLogger("ofisync.batching")

T = TypeVar("T")
R = TypeVar("R")

RETRY_S = 1.0
TURN_ITEMS = 50  # items a prepare step goes through before it lets the work take its turn


async def in_turns(items: Sequence[T], every: int = TURN_ITEMS) -> AsyncIterator[T]:
    """`items`, letting the event loop run other tasks after every `every` of them."""
    for n, item in enumerate(items, 1):
        yield item
        if n % every == 0:
            await asyncio.sleep(0)


class Batcher(Generic[T]):
    def __init__(
        self,
        name: str,
        work: Callable[[Any], Awaitable[None]],
        done: Callable[[list[T]], Awaitable[None]],
        max_batch: int,
        max_waiting: int,
        min_interval_s: float = 0.0,
        on_failure: Callable[[BaseException], None] | None = None,
        on_full: Callable[[], None] | None = None,
        on_room: Callable[[], None] | None = None,
        prepare: Callable[[list[T]], Awaitable[Any]] | None = None,
    ) -> None:
        """`work` gets what `prepare` made of a batch, or the batch itself without `prepare`."""
        self.name = name
        self._prepare = prepare
        self._work = work
        self._done = done
        self._max_batch = max_batch
        self._max_waiting = max_waiting
        self._min_interval_s = min_interval_s
        self._on_failure = on_failure
        self._on_full = on_full
        self._on_room = on_room
        self._last_start = -min_interval_s
        self._waiting: list[T] = []
        self._arrived = asyncio.Event()
        self.full = False

    def put_many(self, items: Sequence[T]) -> None:
        self._waiting.extend(items)
        self._arrived.set()
        if len(self._waiting) >= self._max_waiting:
            self.full = True
            if self._on_full is not None:
                self._on_full()  # again for each hand-over past the limit: a rebalance undoes it

    def take(self) -> list[T]:
        """The next batch: the oldest waiting items, up to the limit."""
        batch = self._waiting[: self._max_batch]
        del self._waiting[: self._max_batch]
        if not self._waiting:
            self._arrived.clear()
        if self.full and len(self._waiting) <= self._max_waiting // 2:
            self.full = False
            if self._on_room is not None:
                self._on_room()
        return batch

    async def run(self) -> None:
        working: asyncio.Task[None] | None = None
        try:
            while True:
                await self._arrived.wait()
                delay = self._last_start + self._min_interval_s - asyncio.get_running_loop().time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._last_start = asyncio.get_running_loop().time()
                batch = self.take()
                prepared: Any = batch
                if self._prepare is not None:
                    prepared = await self._until_done(self._prepare, batch)
                if working is not None:
                    await asyncio.wait([working])
                    if working.exception() is not None:
                        return  # `_ended` has told of it
                working = asyncio.ensure_future(self._finish(batch, prepared))
                working.add_done_callback(self._ended)
        finally:
            if working is not None and not working.done():
                working.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await working

    async def _finish(self, batch: list[T], prepared: Any) -> None:
        await self._until_done(self._work, prepared)
        await self._done(batch)

    async def _until_done(self, step: Callable[[Any], Awaitable[R]], argument: Any) -> R:
        while True:
            try:
                return await step(argument)
            except Exception:
                # The steps handle what they can (dead letters, retries); what escapes is a bug,
                # and the batch is neither skipped nor acknowledged: it is tried again.
                log.exception("%s: a batch failed; trying it again in %.0f s", self.name, RETRY_S)
                await asyncio.sleep(RETRY_S)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Batcher[T]]:
        task = asyncio.ensure_future(self.run())
        task.add_done_callback(self._ended)
        try:
            yield self
        finally:
            if not task.done():  # one that stopped on an error was reported by `_ended`
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _ended(self, task: asyncio.Future[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        log.critical("%s: the batcher stopped on an error", self.name, exc_info=error)
        if self._on_failure is not None:
            self._on_failure(error)
