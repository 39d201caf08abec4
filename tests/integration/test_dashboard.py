"""The dashboard in a real headless browser (Debian's Chromium) against the running stack: the
page loads, its charts draw real figures, the lag it shows is the broker's, and the page of what
needs a person lists its sections."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from ofisync_tools.browser import ensure_chromium, render
from streams.settings import Settings
from streams.stack.orchestrate import Stack
from tests.integration.helpers import eventually, tag, web_json


class Elements(HTMLParser):
    """Every element of a rendered page with its attributes (and the text right inside it)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self.text: dict[str, str] = {}
        self._open: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.found.append((tag, values))
        self._open.append(values.get("id", ""))

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1]:
            self.text[self._open[-1]] = self.text.get(self._open[-1], "") + data

    def all(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [
            a for t, a in self.found if t == tag and all(a.get(k) == v for k, v in attrs.items())
        ]


def sampled(settings: Settings) -> dict[str, Any] | None:
    """The dashboard's state, or None while the worker collects its first figures (503)."""
    try:
        state: dict[str, Any] = web_json(settings, "/dashboard/api/state")
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return None
        raise
    return state


def viewer_group(settings: Settings, topic: str) -> tuple[str, dict[int, int]]:
    """A consumer group that has read nothing of `topic`: its lag is the topic's end offsets."""
    group = f"{settings.tenant}-viewer-{tag()}"
    consumer = KafkaConsumer(
        bootstrap_servers=str(settings.kafka), group_id=group, enable_auto_commit=False
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in parts})
        ends = consumer.end_offsets(parts)
    finally:
        consumer.close()
    return group, {tp.partition: ends[tp] for tp in parts}


@pytest.fixture
def viewer(stack: Stack) -> Iterator[tuple[str, dict[int, int]]]:
    """A group with lag for the dashboard to show, removed afterwards (others read total lag)."""
    group, ends = viewer_group(stack.settings, f"{stack.settings.tenant}.to-crm")
    yield group, ends
    admin = KafkaAdminClient(bootstrap_servers=str(stack.settings.kafka))
    try:
        admin.delete_groups([group])
    finally:
        admin.close()


def test_the_dashboard_loads_draws_real_figures_and_shows_the_brokers_lag(
    stack: Stack, viewer: tuple[str, dict[int, int]]
) -> None:
    ensure_chromium()
    settings = stack.settings
    topic = f"{settings.tenant}.to-crm"
    group, ends = viewer
    assert sum(ends.values()) > 0, "earlier tests sent commands to the CRM"
    eventually(
        lambda: (
            (state := sampled(settings)) is not None
            and any(p["group"] == group for p in state["partitions"])
            and len(state["history"]) >= 2
        ),
        60,
        "the worker sampled the new group",
        every=1.0,
    )
    page = Elements(render(f"http://{settings.web}/dashboard/", wait_ms=3000))
    assert page.all("body", **{"data-loaded": "true"}), "the page rendered its figures"
    shown = {
        int(row["data-partition"]): int(row["data-lag"])
        for row in page.all("tr", **{"data-group": group, "data-topic": topic})
    }
    assert shown == ends  # the broker's log-end offsets, as the group committed 0
    total = page.all("b", id="total-lag")[0]["data-value"]
    assert int(total) >= sum(ends.values())
    for direction in ("erp_to_crm", "crm_to_erp"):  # the share of time each sink applied
        assert page.text.get(f"busy-{direction}", "").strip().endswith("%"), direction
    for chart in ("lag", "rates", "latency", "wal"):
        [svg] = page.all("svg", **{"data-chart": chart})
        assert int(svg["data-drawn"]) >= 2, f"the {chart} chart has a history"
    lag_lines = [p for p in page.all("polyline") if p.get("data-series") == "total lag"]
    assert lag_lines and int(lag_lines[0]["data-points"]) >= 2
    assert int(float(lag_lines[0]["data-last"])) >= sum(ends.values())  # the chart is real data
    components = {
        c["data-component"]: c["data-up"] for c in page.all("span") if "data-component" in c
    }
    assert components.get("worker") == "true" and components.get("kafka") == "true"
    assert page.text.get("verdict", "").strip() not in ("", "loading…")


def test_the_page_of_what_needs_a_person_lists_each_kind(stack: Stack) -> None:
    ensure_chromium()
    page = Elements(render(f"http://{stack.settings.web}/dashboard/attention", wait_ms=3000))
    sections = {
        s["data-section"]: int(s["data-count"]) for s in page.all("section") if "data-section" in s
    }
    assert set(sections) == {
        "unmapped", "dead_letters", "parked", "flagged_deleted", "documents_failing", "conflicts",
        "lock_violations",
    }  # fmt: skip
    expected = web_json(stack.settings, "/dashboard/api/attention")
    assert sections["conflicts"] == len(expected["conflicts"])
    assert sections["flagged_deleted"] == len(expected["flagged_deleted"])
