"""Apply stage: a sink's database work on an event loop of its own, in a thread of its own.

An apply batch waits for PostgreSQL about a dozen times (streams/sink.py). On the worker's event
loop each of those waits ended only when the loop came round to it again, after whatever else was
ready: a capture batch, the hand-over of a fetch, the other sink's work, often tens of
milliseconds under load, for a statement that took one. On a loop of its own a reply is taken up
as soon as the interpreter lets the thread run (Python hands its lock between threads every few
milliseconds), and the sink's waits overlap the worker's own work.

Everything a sink does runs there: its connections are made and used on that loop only. The
worker awaits the result on its own loop; cancelling that await cancels the sink's coroutine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


class SinkLoop:
    def __init__(self, name: str) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """`work`'s result, computed on this loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    def close(self) -> None:
        """Stops the loop and its thread (the worker exits without: its threads are daemons)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
