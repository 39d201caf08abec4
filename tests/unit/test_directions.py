"""A direction's preparation (decode and rules of a batch) shares the event loop with the work
on the batch before it: it must let that work take turns (streams/worker/directions.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from streams.core.model import Side
from streams.worker import metrics
from streams.worker.batching import TURN_ITEMS
from streams.worker.directions import Direction


def test_a_long_preparation_lets_the_work_before_it_take_turns() -> None:
    async def scenario() -> tuple[int, int]:
        unused = cast(Any, None)  # preparing reads no database and sends no dead letter here
        direction = Direction(Side.ERP, "t", unused, unused, unused, unused)
        tombstones = [  # captured messages that decode to nothing to do, quickly
            SimpleNamespace(topic="t.erp.public.clientes", key=b'{"id": 1}', value=None, offset=n)
            for n in range(3 * TURN_ITEMS)
        ]
        turns = 0

        async def work() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        task = asyncio.ensure_future(work())
        await asyncio.sleep(0)  # the work has started and waits for its answer
        prepared = await direction.prepare(tombstones)
        seen = turns
        task.cancel()
        return seen, len(prepared.commands)

    def skipped() -> float:
        labels = {"source": "erp", "outcome": "skipped"}
        return metrics.REGISTRY.get_sample_value("ofisync_changes_total", labels) or 0.0

    counted = skipped()
    turns, commands = asyncio.run(scenario())
    assert commands == 0
    assert skipped() - counted == 3 * TURN_ITEMS  # each message counted, by what became of it
    assert turns >= 2  # at least once every TURN_ITEMS messages, not only once it is done


def test_an_echo_is_known_from_its_bytes_and_counted_with_its_batch() -> None:
    """On PostgreSQL 15 and older the sync's own writes come back marked: each goes with its
    batch (acknowledged in order with the rest) and is counted, never made a command."""
    unused = cast(Any, None)  # no database, no dead letter
    direction = Direction(Side.ERP, "t", unused, unused, unused, unused)
    value = b'{"before":null,"after":{"id":1,"ofisync_origin":"sync"},"source":{"lsn":1}}'
    echo = SimpleNamespace(topic="t.erp.public.clientes", key=b'{"id": 1}', value=value, offset=0)

    def echoes() -> float:
        labels = {"source": "erp", "outcome": "echo"}
        return metrics.REGISTRY.get_sample_value("ofisync_changes_total", labels) or 0.0

    counted = echoes()
    prepared = asyncio.run(direction.prepare([echo, echo]))
    assert prepared.commands == [] and echoes() - counted == 2
