"""Avro commands: round trip, and every schema version readable by the newest (compatible)."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Sequence
from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core import codec
from streams.core.model import Canonical, Command, CommandOp, FieldValue, Side

canonical = st.one_of(st.none(), st.text(), st.booleans(), st.integers(-(2**63), 2**63 - 1))


@given(
    st.sampled_from(list(Side)),
    st.sampled_from(list(CommandOp)),
    st.lists(st.tuples(st.text(), canonical, canonical, st.booleans()), max_size=5),
    st.one_of(st.none(), st.text()),
)
def test_round_trip_keeps_values_and_their_types(
    side: Side, op: CommandOp, values: list[Any], link: str | None
) -> None:
    cmd = Command(
        side, "client", op, "7", link, 10, 20, False, tuple(FieldValue(*v) for v in values)
    )
    back = codec.decode(codec.encode(cmd))
    assert back == cmd
    for a, b in zip(cmd.values, back.values, strict=True):
        assert type(a.after) is type(b.after) and type(a.before) is type(b.before)


def test_every_schema_version_is_read_by_the_newest_of_its_name() -> None:
    for version, schema in codec.schemas().items():
        newest = codec.reader_of(version)
        sample = _SAMPLES[schema["name"]]
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, sample)
        buf.seek(0)
        fastavro.schemaless_reader(buf, schema, codec.schemas()[newest])  # raises if incompatible
        assert version <= newest <= codec.latest_version(batch=codec.is_batch(version))


@given(
    st.lists(
        st.lists(st.tuples(st.text(max_size=3), canonical, canonical, st.booleans()), max_size=4),
        min_size=1,
        max_size=4,
    )
)
def test_a_batch_round_trip_keeps_every_value_and_its_type(batch: list[list[Any]]) -> None:
    commands = [
        _command(n, tuple(FieldValue(*v) for v in values)) for n, values in enumerate(batch)
    ]
    back = codec.decode_all(_v6(commands))
    assert back == commands
    for cmd, read in zip(commands, back, strict=True):
        assert [(type(v.before), type(v.after)) for v in cmd.values] == [
            (type(v.before), type(v.after)) for v in read.values
        ]


def test_equal_values_of_different_types_keep_their_before() -> None:
    values = (FieldValue("vip", 1, True, False), FieldValue("city", "Lugo", "Lugo", False))
    (back,) = codec.decode_all(_v6([_command(1, values)]))
    assert type(back.values[0].before) is int and back.values[1].before == "Lugo"


def test_a_version_4_batch_decodes_to_the_same_commands() -> None:
    values = (FieldValue("name", "old", "new", True), FieldValue("city", "Vigo", "Vigo", False))
    commands = [_command(n, values) for n in range(3)]
    v4 = codec._frame(4, {"commands": [codec._record(c) for c in commands]})
    assert codec.decode_all(v4) == commands


def _columns(cmd: Command) -> dict[str, Any]:
    """A command as a v5 batch wrote it: values as parallel arrays, a before where it differs."""
    values = cmd.values
    before_at = _before_at([v.before for v in values], [v.after for v in values])
    return codec._about(cmd) | {
        "fields": [v.field for v in values],
        "after": [v.after for v in values],
        "changed": [v.changed for v in values],
        "before_at": before_at,
        "before": [values[i].before for i in before_at],
    }


def test_a_version_5_batch_decodes_to_the_same_commands() -> None:
    values = (FieldValue("vip", 1, True, True), FieldValue("city", "Vigo", "Vigo", False))
    commands = [_command(n, values) for n in range(3)]
    v5 = codec._frame(5, {"commands": [_columns(c) for c in commands]})
    assert codec.decode_all(v5) == commands


def test_a_frame_names_each_list_of_columns_once() -> None:
    client = (FieldValue("name", "a", "b", True), FieldValue("city", "Vigo", "Vigo", False))
    other = (FieldValue("title", None, "t", True),)
    frame = _framed([_command(1, client), _command(2, other), _command(3, client)])
    assert frame["field_sets"] == [["name", "city"], ["title"]]
    assert [c["fields_at"] for c in frame["commands"]] == [0, 1, 0]


def test_a_batch_whose_value_arrays_disagree_is_a_codec_error() -> None:
    frame = _framed([_command(1, (FieldValue("name", "a", "b", True),))])
    (good,) = frame["commands"]
    broken_parts: list[dict[str, Any]] = [
        {"after": b"[]"},
        {"before_at": [5]},
        {"before_at": [0, 0]},
        {"fields_at": 1},
        {"after": b"not json"},
        {"after": b'{"name": "b"}'},
        {"after": b"[1.5]"},
        {"before": b"[[]]"},
    ]
    for broken in broken_parts:
        body = frame | {"commands": [good | broken]}
        with pytest.raises(codec.CodecError):
            codec.decode_all(codec._frame(codec.latest_version(batch=True), body))


def _before_at(befores: Sequence[Canonical], afters: Sequence[Canonical]) -> list[int]:
    """The positions whose value before differs from the value after."""
    return [
        i
        for i, (before, after) in enumerate(zip(befores, afters, strict=True))
        if before is not after
        and (before != after or type(before) is not type(after))  # 1 == True, and more
    ]


def _framed(commands: Sequence[Command]) -> dict[str, Any]:
    """A v6 batch as the two-hop worker wrote it: each command's target columns named once
    per frame, its values in JSON."""
    field_sets: dict[tuple[str, ...], int] = {}
    records = []
    for cmd in commands:
        fields = tuple(v.field for v in cmd.values)
        befores = [v.before for v in cmd.values]
        afters = [v.after for v in cmd.values]
        changed = [v.changed for v in cmd.values]
        before_at = _before_at(befores, afters)
        record = codec._about(cmd)
        record["fields_at"] = field_sets.setdefault(fields, len(field_sets))
        record["after"] = orjson.dumps(afters)
        record["changed"] = changed
        record["before_at"] = before_at
        record["before"] = orjson.dumps([befores[i] for i in before_at])
        records.append(record)
    return {"field_sets": [list(fields) for fields in field_sets], "commands": records}


def _v6(commands: Sequence[Command]) -> bytes:
    return codec._frame(6, _framed(commands))


def _command(n: int, values: tuple[FieldValue, ...]) -> Command:
    return Command(Side.ERP, "client", CommandOp.UPSERT, str(n), None, n, n, False, values)


def test_a_batch_keeps_its_commands_in_order_and_one_command_frames_still_decode() -> None:
    commands = [
        Command(Side.ERP, "client", CommandOp.UPSERT, str(n), None, n, n, True,
                (FieldValue("name", None, f"n{n}", True),))
        for n in range(5)
    ]  # fmt: skip
    assert codec.decode_all(_v6(commands)) == commands
    assert codec.decode_all(codec.encode(commands[0])) == commands[:1]
    with pytest.raises(codec.CodecError, match="expected one command"):
        codec.decode(_v6(commands))


def test_newest_schema_has_defaults_for_every_added_field() -> None:
    versions = sorted(v for v in codec.schemas() if not codec.is_batch(v))
    for older, newer in itertools.pairwise(versions):
        old_fields = {
            f["name"]
            for f in json.loads((codec.SCHEMA_DIR / f"v{older}.avsc").read_text())["fields"]
        }
        for f in json.loads((codec.SCHEMA_DIR / f"v{newer}.avsc").read_text())["fields"]:
            assert f["name"] in old_fields or "default" in f, f"v{newer}.{f['name']}"


def test_bad_frames_are_reasoned_errors() -> None:
    with pytest.raises(codec.CodecError, match="magic"):
        codec.decode(b"\x01\x01garbage")
    with pytest.raises(codec.CodecError, match="unknown"):
        codec.decode(b"\x00\x7f")


def _columnar_sample() -> dict[str, Any]:
    values = {"fields": ["name"], "after": ["x"], "changed": [True], "before_at": [], "before": []}
    return {k: v for k, v in _sample().items() if k != "values"} | values


def _framed_sample() -> dict[str, Any]:
    values = {
        "fields_at": 0,
        "after": b'["x"]',
        "changed": [True],
        "before_at": [],
        "before": b"[]",
    }
    return {k: v for k, v in _sample().items() if k != "values"} | values


def _sample() -> dict[str, Any]:
    return {
        "source": "erp",
        "entity": "client",
        "op": "upsert",
        "source_key": "1",
        "link_key": None,
        "lsn": 1,
        "commit_us": 2,
        "full": True,
        "values": [{"field": "name", "before": None, "after": "x", "changed": True}],
    }


_SAMPLES = {
    "ofisync.Command": _sample(),
    "ofisync.CommandBatch": {"commands": [_sample(), _sample()]},
    "ofisync.Commands": {"commands": [_columnar_sample(), _columnar_sample()]},
    "ofisync.CommandFrame": {
        "field_sets": [["name"]],
        "commands": [_framed_sample(), _framed_sample()],
    },
}


@given(st.integers(min_value=2, max_value=60))
def test_a_truncated_command_is_a_codec_error(cut: int) -> None:
    cmd = Command(
        Side.CRM,
        "client",
        CommandOp.UPSERT,
        "7",
        "9",
        1,
        2,
        False,
        (FieldValue("nombre", "a", "b", True),) * 3,
    )
    data = codec.encode(cmd)
    with pytest.raises(codec.CodecError):
        codec.decode(data[: min(cut, len(data) - 1)])
