"""The ofisync worker: the Faust app whose agents are thin adapters around the flow.

One agent per direction reads the changes captured on one side and applies them to the other
(streams/worker/directions.py: one hop); one agent per side reads that side's command topic
(replays, dead letters retried). Each agent's fetched records reach its batcher a whole fetch at
a time (streams/worker/overrides.py), and the batcher acknowledges them only after their work is
done (streams/worker/batching.py). A release task per side sends parked changes again
(streams/worker/release.py), a listener per database hears the parents other workers link, the
mapping feed folds the configuration topics into the live mapping, and the observer samples the
figures the dashboard shows.

Each direction is independent: a batcher whose database is down pauses the fetching of its own
topics, and the other direction goes on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust
import uvloop

from streams.apply.connections import SinkConnections, origin_names
from streams.apply.parent_links import listen as listen_for_linked
from streams.apply.sink import Sink
from streams.core.model import Side
from streams.core.topics import Topics
from streams.ops.observe import Observer
from streams.secrets import Role, login_dsn
from streams.settings import Settings
from streams.stack.topics import ensure_topics
from streams.worker import overrides
from streams.worker.applying import Applier
from streams.worker.batching import Batcher
from streams.worker.dead_letters import DeadLetters
from streams.worker.directions import Commands, Direction, Prepared
from streams.worker.mapping_feed import MappingFeed
from streams.worker.release import Releases
from streams.worker.shutdown import InFlight, SyncWorker, exit_for_restart
from streams.worker.web import add_pages

log = logging.getLogger("ofisync.worker")

CAPTURE_BATCH = 2000  # captured changes a batch takes at most
COMMAND_BATCH = 200  # command messages
BATCH_EVERY_S = 0.005  # batches of an agent start at most this often
# Python's default is 700. Above what the batches in flight hold (a direction routes a batch while
# the one before applies; each captured change keeps a few dozen tracked objects until its batch
# is done), so young collections are not set off by work that is about to be freed anyway.
GC_YOUNG_THRESHOLD = 200_000
HOLD_AGAIN_S = 0.2  # a full direction's hold is made again this often (a rebalance undoes it)


def _raw_topic(app: faust.App, names: Sequence[str]) -> Any:
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


class Worker:
    """The app and its parts, built once (`build_app`)."""

    def __init__(self, settings: Settings, in_flight: InFlight) -> None:
        self.settings = settings
        self.in_flight = in_flight
        self.topics = Topics(settings.tenant)
        datadir = settings.home / "worker" / settings.worker_name
        datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
        self.app = faust.App(
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
        self.state = "starting"
        self.feed = MappingFeed(str(settings.kafka), self.topics.configuration(), settings.tenant)
        self.dead = DeadLetters(overrides.Producer(self.app), self.topics.dead_letters)
        dsns = {db.side: login_dsn(settings, db, Role.SINK) for db in settings.databases}
        origins = {side: origin_names(settings.tenant, side) for side in Side}
        self.sinks = {
            side: Sink(
                side,
                SinkConnections(side, dsns[side.value], dsns[side.other.value], origins),
                settings.conflict_policy,
                lambda: self.feed.mapping,
            )
            for side in Side
        }
        self.observer = Observer(settings, lambda: self.feed.mapping, dsns)
        self.releases = Releases(in_flight)
        self.applier = Applier(
            self.sinks,
            self.dead,
            self.observer.latencies,
            self.releases.linked,
            self.releases.parked,
        )
        self._wire(dsns)

    async def _ready(self) -> None:
        await self.feed.ready.wait()

    def _wire(self, dsns: dict[str, str]) -> None:
        takers: dict[str, overrides.Take] = {}
        for side in Side:
            direction = Direction(
                side, self.settings.tenant, self.applier, self.dead, self.in_flight, self._ready
            )
            names = self.topics.captured_from(side)
            batcher = self._agent(
                side.other.inbound,
                names,
                direction.prepare,
                direction.work,
                CAPTURE_BATCH,
            )
            takers |= dict.fromkeys(names, batcher.put_many)
        for side in Side:
            commands = Commands(side, self.applier, self.dead, self.in_flight, self._ready)
            name = self.topics.commands(side)
            batcher = self._agent(
                f"commands_to_{side.value}", [name], commands.prepare, commands.work, COMMAND_BATCH
            )
            takers[name] = batcher.put_many
        overrides.hand_over_whole_fetches(self.app, takers)
        for side in Side:
            self.app.task(self.releases.task(self.applier, side, self._ready))
            self.app.task(self._listener(side))
        self.app.task(self.feed.run)
        self.app.task(self.observer.run)
        self.app.task(self._started)
        add_pages(
            self.app,
            self.settings,
            lambda: {"state": self.state, "mapping_loaded": self.feed.ready.is_set()},
            lambda: self.feed.mapping,
            self.observer,
            dsns,
        )

    def _agent(
        self,
        name: str,
        topics: list[str],
        prepare: Callable[[list[Any]], Awaitable[Prepared]],
        work: Callable[[Prepared], Awaitable[None]],
        most: int,
    ) -> Batcher[Any]:
        """An agent over `topics` whose records a batcher works through and then acknowledges.
        They reach the batcher a whole fetch at a time, so the agent's stream receives none: the
        agent's subscription is what makes Faust fetch the topics. Past its limit the batcher pauses
        the fetching of its topics, so a database that is down holds back only its own
        direction."""
        app = self.app
        wanted = set(topics)

        async def acknowledge(records: list[Any]) -> None:
            overrides.acknowledge(app.consumer, records)

        def assigned() -> set[Any]:
            return {tp for tp in app.consumer.assignment() if tp.topic in wanted}

        hold = FetchHold(
            lambda: hold_fetching(app.consumer, assigned()),
            lambda: resume_fetching(app.consumer, assigned()),
        )
        batcher: Batcher[Any] = Batcher(
            name,
            work,
            acknowledge,
            most,
            2 * most,
            BATCH_EVERY_S,
            exit_for_restart,
            on_full=hold.full,
            on_room=hold.room,
            prepare=prepare,
        )

        async def run(stream: Any) -> None:
            async with batcher.running():
                async for _ in stream.noack().events():
                    pass

        run.__name__ = name
        app.agent(_raw_topic(app, topics), name=name)(run)
        return batcher

    def _listener(self, database: Side) -> Callable[[], Awaitable[None]]:
        """Parents the other workers' sinks link, told on `database`
        (streams/apply/parent_links.py), wake this worker's release tasks as its own do."""

        def own() -> list[int]:
            return [pid for sink in self.sinks.values() for pid in sink.backend_pids(database)]

        async def listen() -> None:
            dsn = self.sinks[database].target_dsn
            await listen_for_linked(dsn, self.releases.linked, own, database.value)

        listen.__name__ = f"linked_on_{database.value}"
        return listen

    async def _started(self) -> None:
        self.state = "running"
        await overrides.shorten_fetch_wait(self.app)
        _settle_garbage_collector()
        log.info(
            "ofisync worker running (tenant %s, conflict policy %s)",
            self.settings.tenant,
            self.settings.conflict_policy.value,
        )


class FetchHold:
    """A full batcher says so for every message past its limit, because a rebalance clears
    Faust's set of held partitions; each `full` working out the assigned partitions again took
    7 % of the worker's time in a catch-up. The hold is made at once, and made again at most
    every `every_s` while the batcher stays full."""

    def __init__(
        self,
        hold: Callable[[], None],
        resume: Callable[[], None],
        every_s: float = HOLD_AGAIN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hold = hold
        self._resume = resume
        self._every_s = every_s
        self._clock = clock
        self._held_at: float | None = None

    def full(self) -> None:
        now = self._clock()
        if self._held_at is None or now - self._held_at >= self._every_s:
            self._held_at = now
            self._hold()

    def room(self) -> None:
        self._held_at = None
        self._resume()


def hold_fetching(consumer: Any, partitions: set[Any]) -> None:
    """Stops fetching `partitions` through Faust's own flow control for a full buffer: what was
    fetched already is still handed over. (`pause_partitions` takes them out of the very set the
    consumer is handing a fetched batch over by, so the rest of that batch was skipped, while the
    acknowledgements of later messages committed past it: changes lost.)"""
    for tp in partitions:
        consumer.on_buffer_full(tp)


def resume_fetching(consumer: Any, partitions: set[Any]) -> None:
    for tp in partitions:
        consumer.on_buffer_drop(tp)


def _settle_garbage_collector() -> None:
    """The long-lived objects (modules, Faust's and Kafka's state) are frozen once the worker is
    up, so no collection walks them again, and young collections wait for GC_YOUNG_THRESHOLD new
    objects (docs/performance.md has what each threshold cost)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run_worker(settings: Settings) -> None:
    # libuv's event loop: Faust makes several asyncio tasks and callbacks per message.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    deadline = time.monotonic() + 300
    while True:
        try:
            ensure_topics(settings)
            break
        except Exception as exc:  # Kafka not up yet: wait for it rather than fail
            if time.monotonic() > deadline:
                raise
            log.warning("waiting for Kafka at %s: %s", settings.kafka, exc)
            time.sleep(2)
    in_flight = InFlight()
    worker = Worker(settings, in_flight)
    SyncWorker(worker.app, in_flight, loglevel="INFO").execute_from_commandline()
