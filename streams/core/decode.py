"""Decode: the edge where Debezium's JSON envelope becomes a typed `ChangeEvent`.

Raw Debezium dictionaries go no further than this module. Bad input is returned as a
`DecodeError` (errors as data), never raised, so one poisoned message cannot stop the line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson

from streams.core.model import Canonical, ChangeEvent, Op, Side


@dataclass(frozen=True)
class DecodeError:
    reason: str


@dataclass(frozen=True)
class Ignored:
    """A well-formed message that carries no row change (heartbeat, tombstone, truncate)."""

    reason: str


@cache  # a handful of topics, asked twice per message
def source_side(topic: str, tenant: str) -> Side | None:
    for side in Side:
        if topic.startswith(f"{tenant}.{side.value}."):
            return side
    return None


_OPS = {op.value: op for op in Op}  # the enum's own lookup costs a microsecond a change

_DELETE = Op.DELETE  # members as module names (streams/core/model.py says why)

# JSON gives these and objects and arrays; a column value is never an object or an array.
_SCALARS = frozenset((str, int, bool, float, type(None)))


def _row(value: Any, name: str) -> Mapping[str, Canonical] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"'{name}' is not an object")
    if not _SCALARS.issuperset(map(type, value.values())):
        column, v = next((c, v) for c, v in value.items() if type(v) not in _SCALARS)
        raise ValueError(f"'{name}.{column}' has an unsupported value type {type(v).__name__}")
    return value


def _origin(row: Mapping[str, Canonical] | None) -> str | None:
    if row is None:
        return None
    origin = row.get("ofisync_origin")
    return origin if isinstance(origin, str) and origin else None


# Kafka Connect's JSON converter writes an envelope compactly, its fields in schema order:
# `{"before":{...},"after":{...},"source":{...},...}`. Inside a JSON string every quote is
# escaped, so these byte runs can only be the keys themselves.
_AFTER_ROW = b'{"before":'
_AFTER = b'"after":{'
_AFTER_END = b'},"source":{'
_SYNC_ORIGIN = b'"ofisync_origin":"'


def looks_like_echo(value: bytes | None) -> bool:
    """Whether captured bytes are the sync's own write, seen without parsing them: an envelope
    as Kafka Connect writes it whose `after` row has a non-empty `ofisync_origin`. Such a message
    decodes to an event with an origin, an echo outside a replay; anything else (or anything
    written differently) answers False, which means only "decode it". On PostgreSQL 15 and older,
    half of what the worker reads under two-way load are echoes: this drops them undecoded."""
    if value is None or not value.startswith(_AFTER_ROW):
        return False
    # From the end: most changes carry no origin at all, and one scan says so. The last origin
    # is `after`'s when `after` has one (it follows `before`, and `source` has none).
    at = value.rfind(_SYNC_ORIGIN)
    if at < 0 or value.startswith(b'"', at + len(_SYNC_ORIGIN)):  # an empty origin is no origin
        return False
    return value.rfind(_AFTER, 0, at) >= 0 and value.find(_AFTER_END, at) > 0


def decode(
    topic: str, key: bytes | None, value: bytes | None, tenant: str
) -> ChangeEvent | DecodeError | Ignored:
    side = source_side(topic, tenant)
    if side is None:
        return DecodeError(f"topic {topic!r} is not a capture topic of tenant {tenant!r}")
    if value is None:
        return Ignored("tombstone")
    try:
        envelope = orjson.loads(value)
        record_key = orjson.loads(key) if key is not None else None
    except orjson.JSONDecodeError as exc:
        return DecodeError(f"not JSON: {exc}")
    if not isinstance(envelope, dict):
        return DecodeError("the value is not a JSON object (expected a Debezium change envelope)")
    op_code = envelope.get("op")
    if op_code == "t" or op_code == "m":
        return Ignored(f"op {op_code!r} carries no row")
    try:
        op = _OPS.get(op_code) if isinstance(op_code, str) else None
        if op is None:
            raise ValueError(f"unknown op {op_code!r}")
        source = envelope["source"]
        if not isinstance(source, dict):
            raise ValueError("'source' is not an object")
        before = _row(envelope.get("before"), "before")
        after = _row(envelope.get("after"), "after")
        if op is _DELETE and before is None:
            raise ValueError("a delete without 'before' (is REPLICA IDENTITY FULL set?)")
        if op is not _DELETE and after is None:
            raise ValueError(f"op {op.value!r} without 'after'")
        if not isinstance(record_key, dict) or not record_key:
            raise ValueError("the key is not a non-empty JSON object of primary key columns")
        if len(record_key) == 1:  # every synced table's key is its id: no sort, no join
            [only] = record_key.values()
            key_text = str(only)
        else:
            key_text = ",".join(str(record_key[k]) for k in sorted(record_key))
        lsn = int(source["lsn"])
        commit_us = (
            int(source["ts_us"])
            if source.get("ts_us") is not None
            else (int(source["ts_ms"]) * 1000)
        )
        return ChangeEvent(
            source=side,
            schema=str(source["schema"]),
            table=str(source["table"]),
            op=op,
            key=key_text,
            before=before,
            after=after,
            lsn=lsn,
            commit_us=commit_us,
            # The sink never deletes, so a delete is always a person's: only `after` can echo.
            origin=_origin(after),
        )
    except (KeyError, ValueError, TypeError) as exc:
        missing = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        return DecodeError(f"not a Debezium change envelope: {missing}")
