"""Directions (worker): what the agents do with a batch of messages. One hop: the worker that
captures a change applies it.

`Direction`: the changes captured on one side (its Debezium topics) → decode and rules
(streams/core/routing.py) → commands (prepared while the batch before is still applying),
applied to the other side in one transaction; then the commands a side gets about its own rows
(lock restores, placeholder zeroing, the alignments the other side's newer values asked for) to
the side itself. Bad input becomes a dead letter and the batch goes on. The batch's messages are
acknowledged after all of that (streams/worker/batching.py),
so Kafka's offsets move only past what the databases committed.

`Commands`: what `ofisync replay` and `ofisync dlq retry` send to a side's command topic, decoded
and applied to that side as history.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from streams.core import codec
from streams.core.decode import DecodeError, Ignored, looks_like_echo, source_side
from streams.core.model import Command, Side
from streams.core.routing import Echo, route
from streams.core.rules import Invalid, Skip
from streams.worker import metrics
from streams.worker.applying import Applier
from streams.worker.batching import in_turns
from streams.worker.dead_letters import DeadLetters
from streams.worker.shutdown import InFlight

log = logging.getLogger("ofisync.worker")


@dataclass
class Prepared:
    """A batch's messages made commands (the batcher's prepare step, streams/worker/batching.py),
    each with the message it came from, for its dead letter."""

    commands: list[Command] = field(default_factory=list)
    origins: dict[tuple[str, str, str, int], Any] = field(default_factory=dict)

    def add(self, command: Command, message: Any) -> None:
        self.commands.append(command)
        self.origins[command.origin_key] = message


class Direction:
    def __init__(
        self,
        source: Side,
        tenant: str,
        applier: Applier,
        dead: DeadLetters,
        in_flight: InFlight,
        ready: Callable[[], Awaitable[Any]],
    ) -> None:
        self.source = source
        self.tenant = tenant
        self.applier = applier
        self.dead = dead
        self.in_flight = in_flight
        self.ready = ready

    async def prepare(self, messages: list[Any]) -> Prepared:
        prepared = Prepared()
        outcomes: Counter[tuple[str, str]] = Counter()  # counted once a batch, not a message
        async for message in in_turns(messages):
            command = await self._route(message, outcomes)
            if command is not None:
                prepared.add(command, message)
        for (topic, outcome), n in outcomes.items():
            count(topic, self.tenant, outcome, n)
        return prepared

    async def work(self, prepared: Prepared) -> None:
        await self.ready()  # translate with the whole mapping, never half of it
        async with self.in_flight.batch():
            commands, origins = prepared.commands, prepared.origins
            there = [c for c in commands if c.target is not self.source]
            here = [c for c in commands if c.target is self.source]
            result = await self.applier.apply(self.source.other, there, origins)
            await self.applier.apply(self.source, [*here, *result.aligns], origins)

    async def _route(self, message: Any, outcomes: Counter[tuple[str, str]]) -> Command | None:
        topic = message.topic
        if looks_like_echo(message.value):  # PostgreSQL 15 and older send them: not decoded
            outcomes[topic, "echo"] += 1
            return None
        try:
            outcome = route(topic, message.key, message.value, self.tenant)
        except Exception as exc:  # a bug must not stop the line: park the input
            log.exception("capture failed on %s@%s", topic, message.offset)
            await self.dead.send("capture", f"internal error: {exc!r}", message)
            return None
        if isinstance(outcome, Command):
            outcomes[topic, "command"] += 1
            return outcome
        if isinstance(outcome, Echo):  # one written otherwise than Connect writes it
            outcomes[topic, "echo"] += 1
        elif isinstance(outcome, Skip | Ignored):
            outcomes[topic, "skipped"] += 1
        elif isinstance(outcome, DecodeError | Invalid):
            outcomes[topic, "dead"] += 1
            stage = "decode" if isinstance(outcome, DecodeError) else "rules"
            await self.dead.send(stage, outcome.reason, message)
        return None


class Commands:
    """A side's command topic: commands sent as history (replays, dead letters retried)."""

    def __init__(
        self,
        target: Side,
        applier: Applier,
        dead: DeadLetters,
        in_flight: InFlight,
        ready: Callable[[], Awaitable[Any]],
    ) -> None:
        self.target = target
        self.applier = applier
        self.dead = dead
        self.in_flight = in_flight
        self.ready = ready

    async def prepare(self, messages: list[Any]) -> Prepared:
        prepared = Prepared()
        async for message in in_turns(messages):
            try:
                held = codec.decode_all(message.value)
            except (codec.CodecError, ValueError, KeyError, TypeError, EOFError) as exc:
                await self.dead.send("command", f"undecodable command: {exc}", message)
                continue
            for command in held:
                prepared.add(command, message)
        return prepared

    async def work(self, prepared: Prepared) -> None:
        await self.ready()
        async with self.in_flight.batch():
            origins = prepared.origins
            result = await self.applier.apply(self.target, prepared.commands, origins)
            await self.applier.apply(self.target.other, result.aligns, origins)


@cache  # a metric's labels cost a lock and a lookup: once per captured topic, not message
def _counters(topic: str, tenant: str, outcome: str) -> tuple[Any, ...]:
    side = source_side(topic, tenant)
    source = side.value if side is not None else "?"
    changes = metrics.CHANGES.labels(source, outcome)
    return (changes, metrics.ECHOES.labels(source)) if outcome == "echo" else (changes,)


def count(topic: str, tenant: str, outcome: str, n: int = 1) -> None:
    """`n` captured changes of `topic`, by what became of them."""
    for counter in _counters(topic, tenant, outcome):
        counter.inc(n)
