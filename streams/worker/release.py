"""Release (worker): parked changes go to their sink again when a parent gets linked (by this
worker, or by another one: streams/apply/parent_links.py) or when their back-off runs out.

Parked changes are looked for only while some may wait: since a batch parked one or a count
found some (other workers' too), not after every batch. A release takes a limited number of
records; when it was full and moved something on, the next one goes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from streams.apply import parking
from streams.apply.parking import ParentKey
from streams.apply.sink import Sink, TransientError
from streams.core.model import Side
from streams.worker import metrics
from streams.worker.applying import Applier
from streams.worker.shutdown import InFlight

log = logging.getLogger("ofisync.worker")

RELEASE_EVERY_S = 0.5
COUNT_EVERY_S = 5.0


class Releases:
    """The parents linked lately, per target, and the release task of each target."""

    def __init__(self, in_flight: InFlight) -> None:
        self.in_flight = in_flight
        self._linked: dict[Side, list[ParentKey]] = {side: [] for side in Side}
        self._wake = {side: asyncio.Event() for side in Side}
        self._parkings = dict.fromkeys(Side, 0)  # batches of each target that parked something

    def linked(self, parents: list[ParentKey]) -> None:
        """Both targets' release tasks go through the children waiting for `parents` now."""
        for side in Side:
            self._linked[side] += parents
            self._wake[side].set()

    def parked(self, target: Side) -> None:
        """A batch for `target` parked something."""
        self._parkings[target] += 1

    def task(
        self, applier: Applier, target: Side, ready: Callable[[], Awaitable[Any]]
    ) -> Callable[[], Any]:
        sink = applier.sinks[target]

        async def release() -> None:
            await ready()
            last_count = 0.0
            may_wait, seen = True, self._parkings[target]
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake[target].wait(), RELEASE_EVERY_S)
                self._wake[target].clear()
                parents, self._linked[target] = self._linked[target], []
                if self._parkings[target] != seen:
                    may_wait, seen = True, self._parkings[target]
                if may_wait:
                    async with self.in_flight.batch():
                        more = await self._release(applier, sink, parents)
                    if more:  # a release takes RELEASE_LIMIT records: the rest go next, now
                        self._linked[target] = parents + self._linked[target]
                        self._wake[target].set()
                if time.monotonic() - last_count > COUNT_EVERY_S:
                    last_count = time.monotonic()
                    may_wait = await self._count(sink) or self._parkings[target] != seen

        release.__name__ = f"release_to_{target.value}"
        return release

    async def _release(self, applier: Applier, sink: Sink, parents: list[ParentKey]) -> bool:
        """Releases what is due; whether more may be due (the release was full and moved
        something on: what still waits after its attempt is not due again)."""
        try:
            due = await sink.due(parents)
        except TransientError as exc:
            log.warning("%s database unreachable (%s); parked changes wait", sink.target.value, exc)
            return False
        if not due:
            return False
        batch = [cmd for _, cmd in due]
        target = sink.target
        result = await applier.apply(target, batch, parked={id(c): i for i, c in due})
        await applier.apply(target.other, result.aligns)
        return parking.filled(due) and bool(result.applied or result.dead)

    async def _count(self, sink: Sink) -> bool:
        """Counts what waits (and, for the CRM, the documents marked for upload); whether some
        changes are parked."""
        try:
            parked = await sink.parked_count()
            metrics.PARKED.labels(sink.target.value).set(parked)
            if sink.target is Side.CRM:
                waiting, failing = await sink.document_backlog()
                metrics.DOCUMENTS.labels("waiting").set(waiting)
                metrics.DOCUMENTS.labels("failing").set(failing)
        except TransientError:
            return True
        return parked > 0
