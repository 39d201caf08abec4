"""Lag: how far behind the sync is — consumer lag per group/topic/partition (Kafka's committed
offsets against log-end offsets, as Kafka's own consumer-group tool computes it) and the WAL
each replication slot still retains in its database."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from streams.settings import Settings


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group has not committed on this partition yet
    end: int

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(0, self.end - self.committed)


@dataclass(frozen=True)
class SlotLag:
    database: str
    slot: str
    active: bool
    retained_wal_bytes: int  # WAL kept for the slot (restart_lsn → current)
    unconfirmed_bytes: int  # WAL not yet confirmed by the connector (confirmed_flush → current)
    reachable: bool = True  # False: the database did not answer (the figures are unknown)


def tenant_groups(admin: KafkaAdminClient, settings: Settings) -> list[str]:
    """The tenant's consumer groups: every `<tenant>-...` group (the worker's among them)
    but Connect's own, which commits no offsets."""
    groups = {g["group_id"] if isinstance(g, dict) else g[0] for g in admin.list_groups()}
    ours = {g for g in groups if g.startswith(f"{settings.tenant}-")}
    return sorted(ours - {settings.connect_group})


class LagReader:
    """Reads consumer lag with Kafka clients it keeps: the dashboard samples it every few seconds,
    and new clients each time made a bootstrap, two connections and a score of log lines a
    sample. A client that fails is closed, and the next read makes new ones."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: tuple[KafkaAdminClient, KafkaConsumer] | None = None

    def read(self) -> list[PartitionLag]:
        if self._clients is None:
            kafka = str(self.settings.kafka)
            admin = KafkaAdminClient(bootstrap_servers=kafka, client_id="ofisync-lag")
            try:
                consumer = KafkaConsumer(
                    bootstrap_servers=kafka, client_id="ofisync-lag", enable_auto_commit=False
                )
            except Exception:
                admin.close()
                raise
            self._clients = (admin, consumer)
        try:
            return _consumer_lag(self.settings, *self._clients)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._clients is not None:
            admin, consumer = self._clients
            self._clients = None
            consumer.close()
            admin.close()


def consumer_lag(settings: Settings) -> list[PartitionLag]:
    """Consumer lag read once (its clients closed after)."""
    reader = LagReader(settings)
    try:
        return reader.read()
    finally:
        reader.close()


def _consumer_lag(
    settings: Settings, admin: KafkaAdminClient, consumer: KafkaConsumer
) -> list[PartitionLag]:
    groups = tenant_groups(admin, settings)
    committed = admin.list_group_offsets(dict.fromkeys(groups)) if groups else {}
    # Every partition of the topics a group reads, committed on or not (as Kafka's tool).
    partitions = {
        group: sorted(
            TopicPartition(topic, p)
            for topic in {tp.topic for tp in offsets}
            for p in consumer.partitions_for_topic(topic) or ()
        )
        for group, offsets in committed.items()
    }
    every = sorted({tp for tps in partitions.values() for tp in tps})
    ends: dict[TopicPartition, int] = consumer.end_offsets(every) if every else {}
    rows = []
    for group, tps in partitions.items():
        for tp in tps:
            om = committed[group].get(tp)
            offset = om.offset if om is not None and om.offset >= 0 else None
            rows.append(PartitionLag(group, tp.topic, tp.partition, offset, ends.get(tp, 0)))
    return sorted(rows, key=lambda r: (r.group, r.topic, r.partition))


def slot_lag(settings: Settings, dsns: Mapping[str, str] | None = None) -> list[SlotLag]:
    """Each slot's WAL; `dsns` (by side) to read it as another role than the settings' one."""
    rows = []
    for db in settings.databases:
        try:
            conn = psycopg.connect((dsns or {}).get(db.side, db.dsn), connect_timeout=5)
        except psycopg.OperationalError:
            rows.append(SlotLag(db.title, settings.slot_name(db.side), False, 0, 0, False))
            continue
        with conn:
            for slot, active, retained, unconfirmed in conn.execute(
                "SELECT slot_name, active,"
                " coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,"
                " coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint"
                " FROM pg_replication_slots WHERE database = current_database() ORDER BY 1"
            ):
                rows.append(SlotLag(db.title, slot, active, retained, unconfirmed))
    return rows


def report(settings: Settings) -> dict[str, Any]:
    partitions = consumer_lag(settings)
    return {
        "total_lag": sum(p.lag or 0 for p in partitions),
        "partitions": [asdict(p) | {"lag": p.lag} for p in partitions],
        "slots": [asdict(s) for s in slot_lag(settings)],
    }
