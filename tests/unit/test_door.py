"""Messages taken at the door (streams/door.py): the handlers Faust's conductor builds for the
agents' topics, run on a real Faust app (never connected) with real Faust messages."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.types import TP
from faust.types.tuples import Message

from streams.worker.door import take_at_the_door

CAPTURED = "t.erp.public.clientes"
COMMANDS = "t.to-crm"
ECHO = b'{"before":null,"after":{"id":1,"ofisync_origin":"ofisync"},"source":{"lsn":1}}'
CHANGE = b'{"before":null,"after":{"id":1,"ofisync_origin":null},"source":{"lsn":2}}'


class Door:
    """An app whose capture and command topics go through the door to lists."""

    def __init__(self) -> None:
        self.app = faust.App("ofisync-test-door", broker="kafka://127.0.0.1:1")
        self.app.flow_control.resume()  # as a started consumer has it
        self.faust_build = self.app.topics._build_handler  # type: ignore[attr-defined]
        self.taken: dict[str, list[Any]] = {CAPTURED: [], COMMANDS: []}
        self.echoes: list[str] = []

        def taker(topic: str) -> Any:
            async def take(message: Any) -> None:
                self.taken[topic].append(message)

            return take

        takers = {topic: taker(topic) for topic in self.taken}
        take_at_the_door(self.app, takers, [CAPTURED], self.echoes.append)

    def handler(self, topic: str) -> Any:
        return self.app.topics._build_handler(TP(topic, 0), set())  # type: ignore[attr-defined]

    def message(self, topic: str, value: bytes, offset: int = 0, generation: int = 0) -> Any:
        return Message(
            topic, 0, offset, 0.0, 0, None, b"{}", value, None,
            tp=TP(topic, 0), generation_id=self.app.consumer_generation_id + generation,
        )  # fmt: skip


def test_changes_are_taken_and_echoes_dropped_acknowledged_and_counted() -> None:
    door = Door()

    async def run() -> tuple[Any, Any, Any]:
        echo, change = door.message(CAPTURED, ECHO, 1), door.message(CAPTURED, CHANGE, 2)
        frame = door.message(COMMANDS, ECHO, 3)  # a command topic has no echoes to drop
        for message in (echo, change):
            await door.handler(CAPTURED)(message)
        await door.handler(COMMANDS)(frame)
        return echo, change, frame

    echo, change, frame = asyncio.run(run())
    assert door.taken == {CAPTURED: [change], COMMANDS: [frame]}
    assert door.echoes == [CAPTURED]
    assert echo.acked and not change.acked and not frame.acked  # the batcher acknowledges those
    assert TP(CAPTURED, 0) in door.app.monitor.stream_inbound_time  # Faust's livelock check


def test_a_message_from_before_a_rebalance_is_left_unacknowledged() -> None:
    door = Door()
    stale = door.message(CAPTURED, ECHO, generation=-1)
    asyncio.run(door.handler(CAPTURED)(stale))
    assert door.taken[CAPTURED] == [] and door.echoes == [] and not stale.acked


def test_during_a_rebalance_the_door_waits_for_the_flow_to_resume() -> None:
    async def run() -> tuple[bool, list[Any]]:
        door = Door()  # in the loop: mode's flow-control events belong to the loop they are made in
        door.app.flow_control.suspend()
        waiting = asyncio.ensure_future(door.handler(CAPTURED)(door.message(CAPTURED, CHANGE)))
        await asyncio.sleep(0.05)
        held = not waiting.done() and door.taken[CAPTURED] == []
        door.app.flow_control.resume()
        await asyncio.wait_for(waiting, 5)
        return held, door.taken[CAPTURED]

    held, taken = asyncio.run(run())
    assert held and len(taken) == 1


def test_other_topics_keep_faust_s_own_handler() -> None:
    door = Door()
    faust_s = type(door.faust_build(TP("t.configuration", 0), set()))
    assert type(door.handler("t.configuration")) is faust_s
    assert type(door.handler(CAPTURED)) is not faust_s
