"""The ofisync worker: the Faust app whose agents are thin adapters around the flow.

capture agent: captured changes (both databases) → `pipeline.route` → commands on
`<tenant>.to-erp` / `<tenant>.to-crm`, bad input to `<tenant>.dlq`.
apply agents: commands → `Sink.apply` on the target database, translated with the live mapping
that the mapping feed folds from the configuration topics (streams/feed.py).
release task: parked changes → `Sink.release` when a parent gets linked (by this worker, or by
another one: streams/linked.py) or a back-off runs out.

Each agent's messages go from Faust's consumer to the agent's `Batcher` (streams/batching.py) at
the door (streams/door.py); the batcher acknowledges them only after their batch's work is done.
That work never raises: unreachable databases are retried in place (offsets stay uncommitted and
lag grows), anything else becomes a dead letter. A stop signal does not go through Faust's graceful
stop (which cancels the agents mid-batch and then commits): the worker finishes the batch in
flight, flushes the producer and exits; what was applied but not yet committed is redelivered, and
the applied positions make that a no-op. Faust flushes the producer before it commits offsets, so a
command is durable before the change it came from is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache, partial
from importlib import resources
from typing import Any

import faust
import uvloop
from prometheus_client import generate_latest

from streams.apply import parking
from streams.apply.parent_links import listen as listen_for_linked
from streams.apply.parking import ParentKey
from streams.apply.records import BatchResult
from streams.apply.sink import Contended, Sink, TransientError
from streams.core import codec
from streams.core.conflicts import Policy
from streams.core.decode import DecodeError, Ignored, source_side
from streams.core.model import Command, Side
from streams.core.routing import Echo, route
from streams.core.rules import Invalid, Skip
from streams.core.topics import Topics, command_partition, ensure_topics
from streams.ops.observe import Observer, attention
from streams.secrets import Role, login_dsn
from streams.settings import Settings
from streams.worker import metrics
from streams.worker.batching import Batcher
from streams.worker.door import take_at_the_door
from streams.worker.eager import hand_over_eagerly
from streams.worker.mapping_feed import MappingFeed
from streams.worker.sending import Sender

log = logging.getLogger("ofisync.worker")

WEB = resources.files("streams.web")

CAPTURE_BATCH = 2000
APPLY_BATCH = 200  # messages, each a frame of commands
# Batches start at most this often (streams/batching.py): the price of a batch (sends, a
# transaction of a dozen statements) is paid at most 50 and 33 times a second.
CAPTURE_EVERY_S = 0.02
APPLY_EVERY_S = 0.03
MAX_BACKOFF_S = 15.0
DEADLOCK_PAUSE_S = 0.05
FETCH_WAIT_MS = 25
MAX_FRAME_BYTES = 512 * 1024  # Kafka refuses messages over 1 MiB by default
RELEASE_EVERY_S = 0.5
GC_YOUNG_THRESHOLD = 20_000  # Python's default is 700


def _raw_topic(app: faust.App, *names: str) -> Any:
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


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
    """A Faust worker whose stop signals drain the batch in flight and exit without committing
    what was not processed (see the module docstring)."""

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
        except Exception:  # flushing is a courtesy: unflushed commands are re-sent on restart
            log.warning("could not flush the producer before exit", exc_info=True)
        log.info("ofisync worker stopped")
        logging.shutdown()
        os._exit(0)


@dataclass(frozen=True)
class CommandOrigin:
    """One command as a message of its own, for its dead letter: a command of a batch (with
    where the batch came from), or a released parked change (whose message is long committed)."""

    key: bytes
    value: bytes
    topic: str = "ofisync.parked"
    partition: int = -1
    offset: int = -1

    @classmethod
    def of(cls, cmd: Command, message: Any | None) -> CommandOrigin:
        if message is None:
            return cls(cmd.kafka_key, codec.encode(cmd))
        return cls(
            cmd.kafka_key, codec.encode(cmd), message.topic, message.partition, message.offset
        )


class DeadLetters:
    """Sends what cannot be processed to the dead-letter topic, with the reason and the bytes."""

    def __init__(self, sender: Sender, topic: str) -> None:
        self.sender = sender
        self.topic = topic

    async def send(self, stage: str, reason: str, message: Any) -> None:
        metrics.DEAD_LETTERS.labels(stage).inc()
        log.warning(
            "dead letter (%s) from %s[%s]@%s: %s",
            stage,
            message.topic,
            message.partition,
            message.offset,
            reason,
        )
        headers = {
            "ofisync-stage": stage.encode(),
            "ofisync-reason": reason.encode()[:4000],
            "ofisync-topic": message.topic.encode(),
            "ofisync-partition": str(message.partition).encode(),
            "ofisync-offset": str(message.offset).encode(),
            "ofisync-failed-at": str(int(time.time() * 1000)).encode(),
        }
        await self.sender.send(self.topic, message.value, key=message.key, headers=headers)


def build_app(settings: Settings, in_flight: InFlight, partitions: Mapping[str, int]) -> faust.App:
    topics = Topics(settings.tenant)
    command_partitions = {side: partitions[topics.commands(side)] for side in Side}
    policy = Policy(os.environ.get("OFISYNC_CONFLICT_POLICY", Policy.LATER_WINS.value))
    # Each worker process its own directory (several may run: OFISYNC_WORKER_NAME).
    datadir = settings.home / "worker" / os.environ.get("OFISYNC_WORKER_NAME", "worker1")
    datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(
        settings.worker_group,
        broker=f"kafka://{settings.kafka}",
        web_host=settings.web.host,
        web_port=settings.web.port,
        web_bind=settings.web.host,
        datadir=str(datadir),
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5,
        producer_linger=0.002,
        stream_wait_empty=False,
        # A killed worker must not hold its partitions for long.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
    state = {"state": "starting"}
    sender = Sender(app)  # streams/sending.py: not through Faust's `Topic.send`
    dead = DeadLetters(sender, topics.dead_letters)
    feed = MappingFeed(str(settings.kafka), topics.configuration(), settings.tenant)
    # The sinks log in as the sync's own role, which can touch only the synced tables.
    erp_dsn, crm_dsn = (login_dsn(settings, db, Role.SINK) for db in settings.databases)
    sinks = {
        Side.ERP: Sink(Side.ERP, erp_dsn, crm_dsn, policy, lambda: feed.mapping),
        Side.CRM: Sink(Side.CRM, crm_dsn, erp_dsn, policy, lambda: feed.mapping),
    }
    own_dsns = {Side.ERP.value: erp_dsn, Side.CRM.value: crm_dsn}
    observer = Observer(settings, lambda: feed.mapping, own_dsns)
    # Parents linked by a batch, for each sink's release task to pick up at once.
    linked: dict[Side, list[ParentKey]] = {side: [] for side in Side}
    wake = {side: asyncio.Event() for side in Side}
    parkings = dict.fromkeys(Side, 0)  # batches of each sink that parked something
    sent_frames = codec.RecentFrames()  # what capture sent, read back by apply undecoded

    def _batched_agent(
        name: str,
        topic_names: Sequence[str],
        work: Callable[[list[Any]], Awaitable[None]],
        most: int,
        every: float,
    ) -> Batcher[Any]:
        """An agent over `topic_names` whose messages a batcher works through and then
        acknowledges. They reach the batcher at the door (streams/door.py), so the agent's stream
        receives none: the agent's subscription is what makes Faust fetch the topics."""

        async def acknowledge(messages: list[Any]) -> None:
            ack = app.consumer.ack
            for message in messages:
                ack(message)

        batcher = Batcher(name, work, acknowledge, most, 2 * most, every, _exit_for_restart)

        async def run(stream: Any) -> None:
            async with batcher.running():
                async for _ in stream.noack().events():
                    pass

        run.__name__ = name
        app.agent(_raw_topic(app, *topic_names), name=name)(run)
        return batcher

    @cache  # a metric's labels cost a lock and a lookup: once per captured topic, not message
    def _counters(topic: str, outcome: str) -> tuple[Any, ...]:
        side = source_side(topic, settings.tenant)
        source = side.value if side is not None else "?"
        changes = metrics.CHANGES.labels(source, outcome)
        return (changes, metrics.ECHOES.labels(source)) if outcome == "echo" else (changes,)

    def _count_captured(topic: str, outcome: str) -> None:
        for counter in _counters(topic, outcome):
            counter.inc()

    async def _capture(messages: list[Any]) -> None:
        async with in_flight.batch():
            # One message per command partition for the whole batch: a record's commands
            # keep their order (same partition, in order) at a fraction of a message each.
            outgoing: dict[tuple[Side, int], list[Command]] = defaultdict(list)
            for message in messages:
                command = await _capture_one(message)
                if command is not None:
                    target = command.target
                    partition = command_partition(message.partition, command_partitions[target])
                    outgoing[(target, partition)].append(command)
            for (target, partition), commands in outgoing.items():
                for frame, held in _frames(commands):
                    sent_frames.remember(frame, held)
                    await sender.send(topics.commands(target), frame, partition=partition)

    captured = topics.captured_entities()
    capture_batcher = _batched_agent("capture", captured, _capture, CAPTURE_BATCH, CAPTURE_EVERY_S)

    async def _capture_one(message: Any) -> Command | None:
        try:
            outcome = route(message.topic, message.key, message.value, settings.tenant)
        except Exception as exc:  # a bug must not stop the line: park the input
            log.exception("capture failed on %s@%s", message.topic, message.offset)
            await dead.send("capture", f"internal error: {exc!r}", message)
            return None
        if isinstance(outcome, Command):
            _count_captured(message.topic, "command")
            return outcome
        if isinstance(outcome, Echo):  # one written otherwise than Connect writes it
            _count_captured(message.topic, "echo")
        elif isinstance(outcome, Skip | Ignored):
            _count_captured(message.topic, "skipped")
        elif isinstance(outcome, DecodeError | Invalid):
            _count_captured(message.topic, "dead")
            await dead.send(
                "decode" if isinstance(outcome, DecodeError) else "rules", outcome.reason, message
            )
        return None

    async def _apply_messages(sink: Sink, messages: list[Any]) -> None:
        await feed.ready.wait()  # translate with the whole mapping, never half of it
        async with in_flight.batch():
            await _apply_batch(sink, messages)

    apply_batchers = {
        side: _batched_agent(
            f"apply_to_{side.value}",
            [topics.commands(side)],
            partial(_apply_messages, sinks[side]),
            APPLY_BATCH,
            APPLY_EVERY_S,
        )
        for side in Side
    }
    takers = {topic: capture_batcher.put for topic in captured} | {
        topics.commands(side): batcher.put for side, batcher in apply_batchers.items()
    }
    take_at_the_door(app, takers, captured, lambda topic: _count_captured(topic, "echo"))

    async def _apply_batch(sink: Sink, messages: Sequence[Any]) -> None:
        commands: list[tuple[Command, Any]] = []
        for message in messages:
            try:
                held = sent_frames.decode_all(message.value)
            except (codec.CodecError, ValueError, KeyError, TypeError, EOFError) as exc:
                await dead.send("command", f"undecodable command: {exc}", message)
                continue
            commands += [(cmd, message) for cmd in held]
        if not commands:
            return
        result = await _apply_with_retry(sink, [c for c, _ in commands])
        await _settle(sink.target, result, {id(c): m for c, m in commands})

    async def _settle(target: Side, result: BatchResult, messages: dict[int, Any]) -> None:
        """Counts a batch's outcome, dead-letters what failed and wakes the release tasks."""
        _count(target, result)
        if result.parked:
            parkings[target] += 1
        for cmd, reason in result.dead:
            await dead.send("apply", reason, CommandOrigin.of(cmd, messages.get(id(cmd))))
        if result.linked:
            _wake_releases(result.linked)

    def _wake_releases(parents: list[ParentKey]) -> None:
        """Both sinks' release tasks go through the children waiting for `parents` now."""
        for side in Side:
            linked[side] += parents
            wake[side].set()

    async def _apply_with_retry(
        sink: Sink, batch: list[Command], parked: dict[int, int] | None = None
    ) -> BatchResult:
        """Applies `batch`, waiting out an unreachable database. A batch that fails for any
        other reason is applied command by command, so only the failing one is dead-lettered.
        A batch rolled back to break a deadlock goes again at once, after a pause of a few
        milliseconds, random so the other writer's retry does not meet it again."""
        backoff = 0.2
        while True:
            try:
                return await sink.apply(batch, parked)
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
                    total.absorb(await _apply_with_retry(sink, [cmd], parked))
                return total
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _count(target: Side, result: BatchResult) -> None:
        now_us = time.time() * 1_000_000
        direction = f"{target.other.value}_to_{target.value}"
        latency = metrics.LATENCY.labels(direction)
        for entity, n in Counter(cmd.entity for cmd in result.applied).items():
            metrics.APPLIED.labels(target.value, entity).inc(n)
        for cmd in result.applied:
            seconds = max(0.0, (now_us - cmd.commit_us) / 1e6)
            latency.observe(seconds)
            if not cmd.replay:
                observer.latencies.add(direction, seconds)
        metrics.DUPLICATES.labels(target.value).inc(result.duplicates)
        metrics.NOOPS.labels(target.value).inc(result.noops)
        metrics.CONFLICTS.labels(target.value).inc(result.conflicts)
        metrics.LOCK_VIOLATIONS.labels(target.value).inc(result.lock_violations)
        for via, reason in result.fallbacks:
            metrics.MAPPING_FALLBACKS.labels(target.value, via.value).inc()
            log.warning("mapping fallback on %s: %s; used the header default", target.value, reason)

    def release_task(target: Side) -> None:
        sink = sinks[target]

        async def release() -> None:
            await feed.ready.wait()
            last_count = 0.0
            # Parked changes are looked for only while some may wait: since a batch parked one
            # or a count found some (other workers' too), not after every batch that links.
            may_wait, seen = True, parkings[target]
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake[target].wait(), RELEASE_EVERY_S)
                wake[target].clear()
                parents, linked[target] = linked[target], []
                if parkings[target] != seen:
                    may_wait, seen = True, parkings[target]
                if may_wait:
                    async with in_flight.batch():
                        rows, more = await _release_with_retry(sink, parents)
                        if rows is not None:
                            await _settle(target, rows, {})
                    if more:  # a release takes RELEASE_LIMIT records: the rest go next, now
                        linked[target] = parents + linked[target]
                        wake[target].set()
                if time.monotonic() - last_count > 5:
                    last_count = time.monotonic()
                    with contextlib.suppress(TransientError):
                        before = parkings[target]
                        parked = await sink.parked_count()
                        metrics.PARKED.labels(target.value).set(parked)
                        may_wait = parked > 0 or parkings[target] != before
                        if target is Side.CRM:
                            waiting, failing = await sink.document_backlog()
                            metrics.DOCUMENTS.labels("waiting").set(waiting)
                            metrics.DOCUMENTS.labels("failing").set(failing)

        release.__name__ = f"release_to_{target.value}"
        app.task(release)

    async def _release_with_retry(
        sink: Sink, parents: list[ParentKey]
    ) -> tuple[BatchResult | None, bool]:
        """The release of what is due now, and whether more may be due (the release was full
        and moved something on: what still waits after its attempt is not due again)."""
        try:
            due = await sink.due(parents)
        except TransientError as exc:
            log.warning("%s database unreachable (%s); parked changes wait", sink.target.value, exc)
            return None, False
        if not due:
            return None, False
        batch = [cmd for _, cmd in due]
        result = await _apply_with_retry(sink, batch, {id(cmd): pid for pid, cmd in due})
        return result, parking.filled(due) and bool(result.applied or result.dead)

    for side in Side:
        release_task(side)

    def listen_task(database: Side) -> None:
        """Parents the other workers' sinks link, told on `database` (streams/linked.py), wake
        this worker's release tasks as its own sinks' links do."""

        def own() -> list[int]:
            return [pid for sink in sinks.values() for pid in sink.backend_pids(database)]

        async def listen() -> None:
            dsn = sinks[database].target_dsn
            await listen_for_linked(dsn, _wake_releases, own, database.value)

        listen.__name__ = f"linked_on_{database.value}"
        app.task(listen)

    for side in Side:
        listen_task(side)

    app.task(feed.run)
    app.task(observer.run)

    @app.task  # type: ignore[untyped-decorator]
    async def started() -> None:
        state["state"] = "running"
        await _shorten_fetch_wait(app)
        hand_over_eagerly(app.consumer)  # streams/eager.py
        _settle_garbage_collector()
        log.info(
            "ofisync worker running (tenant %s, conflict policy %s)", settings.tenant, policy.value
        )

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json(state | {"mapping_loaded": feed.ready.is_set()})

    @app.page("/dashboard/")
    async def dashboard(web: Any, request: Any) -> Any:
        return web.html(WEB.joinpath("index.html").read_text())

    @app.page("/dashboard/attention")
    async def attention_page(web: Any, request: Any) -> Any:
        return web.html(WEB.joinpath("attention.html").read_text())

    @app.page("/dashboard/app.js")
    async def dashboard_js(web: Any, request: Any) -> Any:
        return web.text(WEB.joinpath("app.js").read_text(), content_type="text/javascript")

    @app.page("/dashboard/style.css")
    async def dashboard_css(web: Any, request: Any) -> Any:
        return web.text(WEB.joinpath("style.css").read_text(), content_type="text/css")

    @app.page("/dashboard/api/state")
    async def dashboard_state(web: Any, request: Any) -> Any:
        if observer.current is None:
            return web.json({"error": "collecting the first figures"}, status=503)
        return web.json(observer.current)

    @app.page("/dashboard/api/attention")
    async def dashboard_attention(web: Any, request: Any) -> Any:
        return web.json(await asyncio.to_thread(attention, settings, feed.mapping, own_dsns))

    @app.page("/mapping")
    async def mapping_page(web: Any, request: Any) -> Any:
        metrics.MAPPING_VERSION.set(feed.mapping.version)
        return web.json(feed.mapping.as_json())

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(
            generate_latest(metrics.REGISTRY), content_type="text/plain; version=0.0.4"
        )

    return app


def _frames(commands: Sequence[Command]) -> list[tuple[bytes, Sequence[Command]]]:
    """`commands` as batch frames under Kafka's message size limit (halved until they fit),
    each with the commands it holds."""
    frame = codec.encode_batch(commands)
    if len(frame) <= MAX_FRAME_BYTES or len(commands) == 1:
        return [(frame, commands)]
    half = len(commands) // 2
    return _frames(commands[:half]) + _frames(commands[half:])


def _exit_for_restart(error: BaseException) -> None:
    """An agent whose batcher stopped would hold its partitions and read nothing more: the worker
    exits instead, to be started again (compose restarts it; locally, the next `ofisync up`), and
    what was not acknowledged is read again (the applied positions make that a no-op where it was
    applied)."""
    log.critical("an agent stopped (above); the worker exits to be restarted")
    logging.shutdown()
    os._exit(70)


async def _shorten_fetch_wait(app: faust.App) -> None:
    """Faust builds its Kafka consumer with a fixed 1.5 s fetch wait and no setting for it. A fetch
    in flight for partitions with nothing new holds back the records of the others that arrive
    meanwhile for that long, so under load records waited seconds before reaching the agents.
    The wait is shortened on the running consumer (aiokafka reads it for every fetch)."""
    for _ in range(120):  # the consumer starts beside this task
        consumer = getattr(getattr(app.consumer, "_thread", None), "_consumer", None)
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = FETCH_WAIT_MS
            return
        await asyncio.sleep(0.5)
    log.warning("could not shorten the Kafka fetch wait (has Faust or aiokafka changed?)")


def _settle_garbage_collector() -> None:
    """Every message makes short-lived objects by the hundred, and each young collection walked
    the long-lived ones too (modules, Faust's and Kafka's state): those are frozen once the
    worker is up, and young collections run less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run_worker(settings: Settings) -> None:
    # libuv's event loop: Faust makes several asyncio tasks and callbacks per message.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    deadline = time.monotonic() + 300
    while True:
        try:
            partitions = ensure_topics(settings)
            break
        except Exception as exc:  # Kafka not up yet: wait for it rather than fail
            if time.monotonic() > deadline:
                raise
            log.warning("waiting for Kafka at %s: %s", settings.kafka, exc)
            time.sleep(2)
    in_flight = InFlight()
    app = build_app(settings, in_flight, partitions)
    SyncWorker(app, in_flight, loglevel="INFO").execute_from_commandline()
