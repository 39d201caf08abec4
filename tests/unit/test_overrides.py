"""The overrides of Faust, mode and aiokafka internals (streams/worker/overrides.py), each run
against the real library: pinned to the versions they were written for, the door handlers
Faust's conductor builds (on a real Faust app, never connected, with real Faust messages), and
the eager hand-over against mode's own `wait_first`."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import faust
import pytest
from faust.types import TP
from faust.types.tuples import Message
from mode import Service

from streams.worker.overrides import (
    PINNED,
    Started,
    eager_wait_first,
    hand_over_eagerly,
    installed_versions,
    take_at_the_door,
)
from tests.unit.test_batching import run


def test_the_overrides_were_written_for_the_installed_versions() -> None:
    """A version bump of Faust, mode or aiokafka must read streams/worker/overrides.py again
    (and then move PINNED): each override reaches into internals that may have changed."""
    assert installed_versions() == PINNED


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

        takers = {topic: self.taken[topic].append for topic in self.taken}
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


DEADLINE_S = 5.0


class Raced:
    """mode's real `wait_first` on a real Service, counting how often the race was run."""

    def __init__(self) -> None:
        self.service = Service()
        self.races = 0

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        self.races += 1
        return await self.service.wait_first(*coros, timeout=timeout)


async def hand_over(steps: list[str], gate: asyncio.Future[None] | None = None) -> str:
    steps.append("start")
    if gate is not None:
        await gate
    steps.append("end")
    return "delivered"


async def never(steps: list[str]) -> None:
    steps.append("never should run")


@run
async def test_a_hand_over_that_does_not_wait_runs_in_place_without_the_race() -> None:
    raced, steps = Raced(), list[str]()
    other = never(steps)
    result = await eager_wait_first(raced.wait_first)(hand_over(steps), other)
    assert result.done and result.results == ["delivered"] and not result.stopped
    assert steps == ["start", "end"] and raced.races == 0
    assert inspect.getcoroutinestate(other) == inspect.CORO_CLOSED


@run
async def test_a_hand_over_that_waits_finishes_in_the_race_each_step_once() -> None:
    raced, steps = Raced(), list[str]()
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    racing = asyncio.ensure_future(
        eager_wait_first(raced.wait_first)(hand_over(steps, gate), asyncio.Event().wait())
    )
    await asyncio.sleep(0)
    assert steps == ["start"] and raced.races == 1
    gate.set_result(None)
    result = await asyncio.wait_for(racing, DEADLINE_S)
    assert result.results == ["delivered"] and steps == ["start", "end"]


@run
async def test_a_waiting_hand_over_loses_the_race_to_a_rebalance_and_is_cancelled() -> None:
    raced, steps = Raced(), list[str]()
    suspended = asyncio.Event()
    cancelled = asyncio.Event()

    async def held() -> None:
        steps.append("start")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    racing = asyncio.ensure_future(eager_wait_first(raced.wait_first)(held(), suspended.wait()))
    await asyncio.sleep(0)
    suspended.set()
    result = await asyncio.wait_for(racing, DEADLINE_S)
    assert result.results == [True] and steps == ["start"]  # the suspension won
    await asyncio.wait_for(cancelled.wait(), DEADLINE_S)


@run
async def test_errors_before_and_after_the_first_wait_reach_the_caller() -> None:
    raced = Raced()

    async def broken_at_once() -> None:
        raise ValueError("at once")

    async def broken_later() -> None:
        await asyncio.sleep(0)
        raise ValueError("later")

    wait_first = eager_wait_first(raced.wait_first)
    other = never([])
    with pytest.raises(ValueError, match="at once"):
        await wait_first(broken_at_once(), other)
    assert inspect.getcoroutinestate(other) == inspect.CORO_CLOSED
    with pytest.raises(ValueError, match="later"):
        await wait_first(broken_later())


@run
async def test_events_and_timeouts_go_straight_to_the_original() -> None:
    raced = Raced()
    ready = asyncio.Event()
    ready.set()
    wait_first = eager_wait_first(raced.wait_first)
    await wait_first(ready)
    await wait_first(hand_over([]), timeout=DEADLINE_S)
    assert raced.races == 2


@run
async def test_started_carries_a_coroutine_on_from_its_first_wait() -> None:
    steps: list[str] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    coro = hand_over(steps, gate)
    waiting_on = coro.send(None)
    gate.set_result(None)
    assert await Started(coro, waiting_on) == "delivered"
    assert steps == ["start", "end"]


def test_a_consumer_without_wait_first_is_left_alone() -> None:
    class Consumer:
        pass

    assert not hand_over_eagerly(Consumer())
