"""Decode: Debezium envelopes → typed events; bad input → DecodeError, never an exception."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.decode import DecodeError, Ignored, decode, looks_like_echo
from streams.core.model import ChangeEvent, Op, Side

TOPIC = "ofisync.erp.public.clientes"


def envelope(
    op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, **source: object
) -> bytes:
    src = {
        "lsn": 1234,
        "ts_us": 1_700_000_000_000_001,
        "ts_ms": 1_700_000_000_000,
        "schema": "public",
        "table": "clientes",
        "snapshot": "false",
    } | source
    return json.dumps({"op": op, "before": before, "after": after, "source": src}).encode()


def test_update_with_before_image() -> None:
    ev = decode(
        TOPIC,
        b'{"id": 7}',
        envelope("u", {"id": 7, "nombre": "a"}, {"id": 7, "nombre": "b"}),
        "ofisync",
    )
    assert isinstance(ev, ChangeEvent)
    assert (ev.source, ev.op, ev.key, ev.table, ev.lsn) == (
        Side.ERP,
        Op.UPDATE,
        "7",
        "clientes",
        1234,
    )
    assert ev.commit_us == 1_700_000_000_000_001
    assert ev.before == {"id": 7, "nombre": "a"} and ev.after == {"id": 7, "nombre": "b"}
    assert ev.origin is None


def test_commit_time_falls_back_to_milliseconds() -> None:
    raw = json.loads(envelope("c", None, {"id": 1}))
    del raw["source"]["ts_us"]
    ev = decode(TOPIC, b'{"id": 1}', json.dumps(raw).encode(), "ofisync")
    assert isinstance(ev, ChangeEvent) and ev.commit_us == 1_700_000_000_000_000


def test_the_sync_s_own_write_is_marked_as_an_echo() -> None:
    ev = decode(
        TOPIC,
        b'{"id": 1}',
        envelope("u", {"id": 1}, {"id": 1, "ofisync_origin": "sync"}),
        "ofisync",
    )
    assert isinstance(ev, ChangeEvent) and ev.origin == "sync"


def test_a_delete_is_never_an_echo() -> None:
    ev = decode(
        TOPIC, b'{"id": 1}', envelope("d", {"id": 1, "ofisync_origin": "sync"}, None), "ofisync"
    )
    assert isinstance(ev, ChangeEvent) and ev.op is Op.DELETE and ev.origin is None


def test_crm_topic_is_the_crm_side() -> None:
    ev = decode(
        "ofisync.crm.public.accounts",
        b'{"id": 3}',
        envelope("c", None, {"id": 3}, table="accounts"),
        "ofisync",
    )
    assert isinstance(ev, ChangeEvent) and ev.source is Side.CRM


def test_tombstones_and_truncates_are_ignored() -> None:
    assert isinstance(decode(TOPIC, b'{"id": 1}', None, "ofisync"), Ignored)
    assert isinstance(decode(TOPIC, None, envelope("t", None, None), "ofisync"), Ignored)


def test_bad_input_is_a_reasoned_decode_error() -> None:
    cases = {
        b"not json": "not JSON",
        b"[1, 2]": "not a JSON object",
        envelope("x", None, {"id": 1}): "not a Debezium change envelope: unknown op 'x'",
        envelope("d", None, None): "REPLICA IDENTITY FULL",
        envelope("u", {"id": 1}, None): "without 'after'",
        b'{"op": "c", "after": {"id": 1}}': "missing field 'source'",
        envelope("c", None, {"id": {"nested": 1}}): "unsupported value type",
    }
    for value, reason in cases.items():
        out = decode(TOPIC, b'{"id": 1}', value, "ofisync")
        assert isinstance(out, DecodeError), value
        assert reason in out.reason, (out.reason, reason)
    assert isinstance(decode("other.topic", b"{}", b"{}", "ofisync"), DecodeError)
    assert isinstance(
        decode(TOPIC, b"no-json-key", envelope("c", None, {"id": 1}), "ofisync"), DecodeError
    )


@given(st.binary(), st.one_of(st.none(), st.binary()))
def test_no_bytes_crash_decode(value: bytes, key: bytes | None) -> None:
    out = decode(TOPIC, key, value, "ofisync")
    assert isinstance(out, ChangeEvent | DecodeError | Ignored)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from(["op", "before", "after", "source"]), json_values))
def test_no_json_shape_crashes_decode(doc: dict[str, Any]) -> None:
    out = decode(TOPIC, b'{"id": 1}', json.dumps(doc).encode(), "ofisync")
    assert isinstance(out, ChangeEvent | DecodeError | Ignored)


# What Kafka Connect's JSON converter writes: compact, the envelope's fields in schema order.
def connect_envelope(
    op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, **source: object
) -> bytes:
    src = {"version": "3.6.1.Final", "lsn": 1234, "ts_us": 1, "schema": "public"} | source
    src |= {"table": "clientes", "origin": None}
    return orjson.dumps(
        {"before": before, "after": after, "source": src, "transaction": None, "op": op}
    )


# Values that spell the very keys the check looks for, in and out of strings.
tricky_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            '"after":{',
            '},"source":{',
            '"ofisync_origin":"sync"',
            '{"before":',
            "\\",
            '\\"',
            "",
        ]
    ),
)
row_values = st.dictionaries(
    st.sampled_from(["id", "nombre", "email", "notas"]),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.booleans(), tricky_text),
)
origins = st.one_of(st.none(), st.just(""), st.just("sync"), st.just("restore"), tricky_text)


@settings(max_examples=500)
@given(
    st.sampled_from(["c", "u", "d", "r"]),
    st.one_of(st.none(), row_values),
    row_values,
    origins,
    origins,
)
def test_the_byte_check_for_echoes_agrees_with_decoding(
    op: str,
    before: dict[str, Any] | None,
    after: dict[str, Any],
    before_origin: str | None,
    after_origin: str | None,
) -> None:
    if before is not None:
        before = before | {"ofisync_origin": before_origin}
    row = None if op == "d" else after | {"ofisync_origin": after_origin}
    value = connect_envelope(op, before, row)
    event = decode(TOPIC, b'{"id": 1}', value, "ofisync")
    is_echo = isinstance(event, ChangeEvent) and event.origin is not None
    assert looks_like_echo(value) == is_echo


def test_the_byte_check_answers_no_to_anything_else() -> None:
    echo = connect_envelope("u", {"id": 1}, {"id": 1, "ofisync_origin": "sync"})
    assert looks_like_echo(echo)
    assert not looks_like_echo(None)
    assert not looks_like_echo(b"")
    assert not looks_like_echo(echo[:40])  # cut short: decoded, and dead-lettered there
    assert not looks_like_echo(echo[: echo.index(b',"source"')])  # cut after its origin
    assert not looks_like_echo(echo[: echo.index(b'sync"')])  # cut inside its origin
    # Written otherwise (spaces, another order): decoded in full, which still finds the echo.
    spaced = envelope("u", {"id": 1}, {"id": 1, "ofisync_origin": "sync"})
    assert not looks_like_echo(spaced)
    event = decode(TOPIC, b'{"id": 1}', spaced, "ofisync")
    assert isinstance(event, ChangeEvent) and event.origin == "sync"


def test_a_key_of_several_columns_is_its_values_in_column_order() -> None:
    ev = decode(TOPIC, b'{"seq": 3, "file": 40}', envelope("c", None, {"id": 1}), "ofisync")
    assert isinstance(ev, ChangeEvent) and ev.key == "40,3"
    ev = decode(TOPIC, b'{"id": 12}', envelope("c", None, {"id": 12}), "ofisync")
    assert isinstance(ev, ChangeEvent) and ev.key == "12"
