"""Applying (worker): a batch of commands to one side's sink, and what follows from its result.

An unreachable database is waited for with back-off (the batch's messages stay unacknowledged,
so lag grows and drains when it answers); a batch rolled back to break a deadlock goes again at
once; a batch that fails otherwise is applied command by command, so only the failing one becomes
a dead letter. The work never raises. Then its outcome is counted, its dead letters sent, and the
release tasks woken for the parents it linked. The time each attempt takes is the sink's busy
time (`ofisync_apply_busy_seconds_total`): a sink busy most of the time makes changes queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from streams.apply.parking import ParentKey
from streams.apply.results import BatchResult
from streams.apply.sink import Contended, Sink, TransientError
from streams.core.model import Command, Side
from streams.ops.observe import Latencies
from streams.ops.repeats import FALLBACK_REPEAT_S, Repeats
from streams.worker import metrics
from streams.worker.dead_letters import CommandOrigin, DeadLetters

log = logging.getLogger("ofisync.worker")

MAX_BACKOFF_S = 15.0
DEADLOCK_PAUSE_S = 0.05


class Applier:
    def __init__(
        self,
        sinks: Mapping[Side, Sink],
        dead: DeadLetters,
        latencies: Latencies,
        on_linked: Callable[[list[ParentKey]], None],
        on_parked: Callable[[Side], None],
    ) -> None:
        self.sinks = sinks
        self.dead = dead
        self.latencies = latencies
        self.on_linked = on_linked
        self.on_parked = on_parked
        self.fallbacks_said = Repeats(FALLBACK_REPEAT_S)

    async def apply(
        self,
        target: Side,
        commands: Sequence[Command],
        messages: Mapping[tuple[str, str, str, int], Any] | None = None,
        parked: Mapping[int, int] | None = None,
    ) -> BatchResult:
        """Applies `commands` to `target` and settles the result (`messages`: the message each
        change came from (Command.origin_key), for its dead letter; `parked`: id(command) → its
        parked row)."""
        if not commands:
            return BatchResult()
        result = await self._with_retry(self.sinks[target], list(commands), parked)
        await self.settle(target, result, messages or {})
        return result

    async def _with_retry(
        self, sink: Sink, batch: list[Command], parked: Mapping[int, int] | None
    ) -> BatchResult:
        backoff = 0.2
        while True:
            try:
                return await _apply_once(sink, batch, parked)
            except Contended as exc:
                metrics.DEADLOCK_RETRIES.labels(sink.target.value).inc()
                log.info("%s: %s; the batch goes again", sink.target.value, exc)
                await asyncio.sleep(random.uniform(0.0, DEADLOCK_PAUSE_S))
                continue
            except TransientError as exc:
                metrics.RETRIES.labels(sink.target.value).inc()
                log.warning(
                    "%s database unreachable (%s); retrying in %.1f s",
                    sink.target.value,
                    exc,
                    backoff,
                )
            except Exception as exc:
                if len(batch) == 1:
                    log.exception("apply to %s failed", sink.target.value)
                    return BatchResult(dead=[(batch[0], f"internal error: {exc!r}")])
                log.exception("apply to %s failed; retrying one by one", sink.target.value)
                total = BatchResult()
                for cmd in batch:
                    total.absorb(await self._with_retry(sink, [cmd], parked))
                return total
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def settle(
        self,
        target: Side,
        result: BatchResult,
        messages: Mapping[tuple[str, str, str, int], Any],
    ) -> None:
        """Counts a batch's outcome, dead-letters what failed and wakes the release tasks. The
        batch is committed by now: a failure to count it is logged, never raised (raised, the
        batch would go again for ever and nothing behind it would move)."""
        try:
            _count(target, result, self.latencies)
            _warn_fallbacks(target, result, self.fallbacks_said)
        except Exception:
            log.exception("counting a batch applied to %s failed; it is applied", target.value)
        if result.parked:
            self.on_parked(target)
        for cmd, reason in result.dead:
            origin = CommandOrigin.of(cmd, messages.get(cmd.origin_key))
            await self.dead.send("apply", reason, origin)
        if result.linked:
            self.on_linked(result.linked)


async def _apply_once(
    sink: Sink, batch: list[Command], parked: Mapping[int, int] | None
) -> BatchResult:
    """One attempt, its time counted as the sink's busy time (whatever its outcome)."""
    started = time.perf_counter()
    try:
        return await sink.apply(batch, parked)
    finally:
        metrics.APPLY_BUSY.labels(sink.target.value).inc(time.perf_counter() - started)


def _count(target: Side, result: BatchResult, latencies: Latencies) -> None:
    now_us = time.time() * 1_000_000
    direction = target.inbound
    latency = metrics.LATENCY.labels(direction)
    for entity, n in Counter(cmd.entity for cmd in result.applied).items():
        metrics.APPLIED.labels(target.value, entity).inc(n)
    for cmd in result.applied:
        if cmd.replay or cmd.target is cmd.source:
            continue
        seconds = max(0.0, (now_us - cmd.commit_us) / 1e6)
        latency.observe(seconds)
        latencies.add(direction, seconds)
    metrics.DUPLICATES.labels(target.value).inc(result.duplicates)
    metrics.NOOPS.labels(target.value).inc(result.noops)
    metrics.CONFLICTS.labels(target.value).inc(result.conflicts)
    metrics.LOCK_VIOLATIONS.labels(target.value).inc(result.lock_violations)
    metrics.MATCHED.labels(target.value).inc(result.matched)
    for reason in ("paused", "flagged", "gone"):
        metrics.HELD.labels(target.value, reason).inc(getattr(result, reason))
    for (via, _), n in result.fallbacks.items():
        metrics.MAPPING_FALLBACKS.labels(target.value, via.value).inc(n)


def _warn_fallbacks(target: Side, result: BatchResult, repeats: Repeats) -> None:
    for (via, reason), n in result.fallbacks.items():
        times = repeats.due((target, via, reason), n)
        if times is None:
            continue
        log.warning(
            "mapping fallback on %s: %s; used the header default for %s value%s (said again at"
            " most every %.0f s while it recurs)",
            target.value, reason, f"{times:,}", "" if times == 1 else "s", repeats.every_s,
        )  # fmt: skip
