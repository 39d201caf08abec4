"""Shutdown (worker): a stop signal finishes the batch in flight and exits without committing
what was not processed.

Faust's graceful stop cancels the agents mid-batch and then commits what they had acknowledged,
which a batch cut short would lose. Here the worker stops starting batches, waits for the one in
flight (up to `STOP_GRACE_S`), flushes the producer and exits; what was applied but not yet
committed is redelivered on restart, and the positions in the target rows make that a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import faust

log = logging.getLogger("ofisync.worker")

STOP_GRACE_S = 20.0


class InFlight:
    """Counts batches being processed, so a stop can wait for them and start no new one."""

    def __init__(self) -> None:
        self.count = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        if self.closing:
            await asyncio.Event().wait()  # never start new work once stopping: exit comes first
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


class SyncWorker(faust.Worker):
    """A Faust worker whose stop signals drain the batch in flight and exit (see above)."""

    def __init__(self, app: faust.App, in_flight: InFlight, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.in_flight = in_flight
        self._stopping: asyncio.Future[None] | None = None

    def _on_sigterm(self) -> None:
        self._drain_then_exit()

    def _on_sigint(self) -> None:
        self._drain_then_exit()

    def _drain_then_exit(self) -> None:
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._drain_and_exit())

    async def _drain_and_exit(self) -> None:
        self.in_flight.closing = True
        log.info("stopping: finishing the batch in flight")
        try:
            await asyncio.wait_for(self.in_flight.idle(), STOP_GRACE_S)
        except TimeoutError:
            log.warning(
                "a batch is still in flight after %.0f s; it stays uncommitted and is"
                " processed again on restart",
                STOP_GRACE_S,
            )
        try:
            await asyncio.wait_for(self.app.producer.flush(), 5.0)
        except Exception:  # flushing is a courtesy: an unsent dead letter is made again
            log.warning("could not flush the producer before exit", exc_info=True)
        log.info("ofisync worker stopped")
        logging.shutdown()
        os._exit(0)


def exit_for_restart(error: BaseException) -> None:
    """An agent whose batcher stopped would hold its partitions and read nothing more: the worker
    exits instead, to be started again (compose restarts it; locally, the next `ofisync up`), and
    what was not acknowledged is read again (the positions make that a no-op where it was
    applied)."""
    log.critical("an agent stopped (above); the worker exits to be restarted")
    logging.shutdown()
    os._exit(70)
