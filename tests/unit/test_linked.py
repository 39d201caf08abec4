"""Linked parents told across workers: the payloads PostgreSQL carries between sinks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.apply.parent_links import MAX_PAYLOAD_BYTES, parents_of, payloads
from streams.apply.parking import ParentKey

names = st.text(min_size=1, max_size=40)
parents = st.lists(
    st.tuples(st.sampled_from(["client", "file"]), st.sampled_from(["erp", "crm"]), names)
)


@given(parents)
def test_every_parent_crosses_in_order_in_payloads_postgresql_accepts(
    linked: list[ParentKey],
) -> None:
    sent = payloads(linked)
    assert all(len(p.encode()) < MAX_PAYLOAD_BYTES for p in sent)
    assert [parent for p in sent for parent in parents_of(p)] == linked


def test_a_large_batch_is_split() -> None:
    linked = [("file", "crm", str(10**9 + i)) for i in range(1000)]
    sent = payloads(linked)
    assert len(sent) > 1
    assert [parent for p in sent for parent in parents_of(p)] == linked


def test_someone_elses_notification_names_no_parent() -> None:
    assert parents_of("hello") == []
    assert parents_of('{"file": 1}') == []
    assert parents_of('[["file", "crm"], ["file", "crm", 7], ["file", "crm", "8"]]') == [
        ("file", "crm", "8")
    ]
