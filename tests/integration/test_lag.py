"""`ofisync lag`: per group/topic/partition figures that agree with Kafka's own tool, and a lag
reader kept across samples (the dashboard's) that sees what came after it connected."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from streams.core.topics import Topics
from streams.ops.lag import LagReader
from streams.stack.kafka import jvm
from streams.stack.orchestrate import Stack
from tests.integration.helpers import eventually, ofisync, settled, tag


def kafka_tool_lag(stack: Stack, group: str) -> dict[tuple[str, int], tuple[int, int, int]]:
    out = subprocess.run(
        jvm(
            stack.settings,
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            str(stack.settings.kafka),
            "--describe",
            "--group",
            group,
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = {}
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[0] == group and cols[2].isdigit():
            current = int(cols[3]) if cols[3].isdigit() else -1
            rows[(cols[1], int(cols[2]))] = (
                current,
                int(cols[4]),
                int(cols[5]) if cols[5].isdigit() else -1,
            )
    return rows


def test_lag_agrees_with_kafka_s_consumer_group_tool(stack: Stack) -> None:
    settled(stack.settings, Topics(stack.settings.tenant).all())

    def drained() -> dict[str, Any] | None:
        report: dict[str, Any] = json.loads(ofisync("lag", "--json").stdout)
        mine = [p for p in report["partitions"] if p["group"] == stack.settings.worker_group]
        return report if mine and all((p["lag"] or 0) == 0 for p in mine) else None

    report = eventually(drained, 60, "lag drained to 0")
    group = stack.settings.worker_group

    def dash(value: int | None) -> int:
        return -1 if value is None else value  # Kafka's tool prints "-" for no commit yet

    ours = {
        (p["topic"], p["partition"]): (dash(p["committed"]), p["end"], dash(p["lag"]))
        for p in report["partitions"]
        if p["group"] == group
    }
    assert ours, "the worker group shows in `ofisync lag`"
    assert ours == kafka_tool_lag(stack, group)
    slots = {s["slot"]: s for s in report["slots"]}
    assert set(slots) == {stack.settings.slot_name("erp"), stack.settings.slot_name("crm")}
    assert all(s["active"] for s in slots.values())
    assert all(s["retained_wal_bytes"] >= 0 for s in slots.values())
    assert "total lag:" in ofisync("lag").stdout


def test_a_kept_lag_reader_sees_new_groups_topics_and_offsets(stack: Stack) -> None:
    """The dashboard keeps one reader: what appears after its first read must still show."""
    settings = stack.settings
    topic, group = f"{settings.tenant}.lag-{tag()}", f"{settings.tenant}-lag-{tag()}"
    reader = LagReader(settings)
    try:
        reader.read()  # connected, with the cluster's metadata of now
        admin = KafkaAdminClient(bootstrap_servers=str(settings.kafka))
        try:
            admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        finally:
            admin.close()
        producer = KafkaProducer(bootstrap_servers=str(settings.kafka), acks="all")
        try:

            def send(n: int) -> None:
                for i in range(n):
                    producer.send(topic, b"x", partition=i % 2)
                producer.flush()

            send(4)
            consumer = KafkaConsumer(
                bootstrap_servers=str(settings.kafka), group_id=group, enable_auto_commit=False
            )
            try:
                consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, "", -1)})
            finally:
                consumer.close()

            def mine() -> dict[int, tuple[int | None, int]] | None:
                rows = {p.partition: (p.committed, p.end) for p in reader.read()
                        if p.group == group}  # fmt: skip
                return rows or None

            assert eventually(mine, 30, "the new group in the kept reader") == {
                0: (1, 2),
                1: (None, 2),
            }
            send(6)

            def moved() -> dict[int, tuple[int | None, int]] | None:
                rows = mine()
                return rows if rows and rows.get(0, (None, 0))[1] == 5 else None

            assert eventually(moved, 30, "the new end offsets in the kept reader") == {
                0: (1, 5),
                1: (None, 5),
            }
        finally:
            producer.close()
    finally:
        reader.close()
        admin = KafkaAdminClient(bootstrap_servers=str(settings.kafka))
        try:  # a group left behind would show in every later lag report of this stack
            admin.delete_groups([group])
            admin.delete_topics([topic])
        finally:
            admin.close()
