"""The worker's garbage collector: long-lived objects frozen, and young collections not set off by
the batches of captured changes in flight (each collection walks every young object: at a lower
threshold a catch-up spent a tenth of its time in them)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import orjson
import pytest

from streams.core.contract import CLIENT
from streams.core.model import Command, Side
from streams.core.routing import route
from streams.worker import app

TOPIC = "ofisync.erp.public.clientes"


def client_update(n: int) -> tuple[bytes, bytes]:
    """A captured update of an OfiViaje client as Kafka Connect writes it: every column, two
    synced fields changed."""
    before = {f.erp: f"{f.erp} {n}" for f in CLIENT.fields} | {
        "id": n,
        "sincronizar_crm": True,
        "crm_id": 10_000 + n,
        "ofisync_origin": None,
        "ofisync_deleted_at": None,
        "ofisync_writer": "postgres",
        "ofisync_clocks": '{"email": "t:1796405263308464"}',
        "ofisync_base": None,
    }
    after = before | {
        "email": f"new{n}@example.com",
        "observaciones": f"note {n}",
        "ofisync_clocks": '{"email": "x:153349", "observaciones": "x:153349"}',
        "ofisync_base": '{"email": 1796405263308464}',
    }
    source = {
        "schema": "public",
        "table": "clientes",
        "lsn": 5_800_000_000 + n,
        "ts_us": 1_700_000_000_000_000,
    }
    value = orjson.dumps({"before": before, "after": after, "source": source, "op": "u"})
    return orjson.dumps({"id": n}), value


@pytest.fixture
def collector_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    gc.enable()


def test_the_routed_batches_in_flight_stay_below_the_young_threshold(
    collector_restored: None,
) -> None:
    messages = [client_update(n) for n in range(app.CAPTURE_BATCH)]
    gc.collect()
    gc.disable()
    before = gc.get_count()[0]
    routed = [route(TOPIC, key, value, "ofisync") for key, value in messages]
    tracked = gc.get_count()[0] - before
    gc.enable()
    assert all(isinstance(r, Command) for r in routed)
    # Each direction routes a batch while the one before it applies.
    in_flight = len(Side) * 2 * tracked
    assert in_flight < app.GC_YOUNG_THRESHOLD, (
        f"{tracked / len(routed):.0f} tracked objects a routed change: the batches in flight"
        f" ({in_flight}) would set off young collections (threshold {app.GC_YOUNG_THRESHOLD})"
    )


def test_the_worker_freezes_what_it_started_with_and_collects_young_objects_less_often(
    collector_restored: None,
) -> None:
    gc.unfreeze()
    app._settle_garbage_collector()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == app.GC_YOUNG_THRESHOLD
