"""`ofisync lag`: per group/topic/partition figures that agree with Kafka's own tool."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from streams.core.topics import Topics
from streams.stack.kafka import jvm
from streams.stack.orchestrate import Stack
from tests.integration.helpers import eventually, ofisync, settled


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
