"""Avro commands: round trip, and every schema version readable by the newest (compatible)."""

from __future__ import annotations

import io
import itertools
import json
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams import codec
from streams.model import Command, CommandOp, FieldValue, Side

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


def test_every_schema_version_is_read_by_the_newest_of_its_kind() -> None:
    for version, schema in codec.schemas().items():
        batch = codec.is_batch(version)
        newest = codec.schemas()[codec.latest_version(batch=batch)]
        sample = {"commands": [_sample(), _sample()]} if batch else _sample()
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, sample)
        buf.seek(0)
        fastavro.schemaless_reader(buf, schema, newest)  # raises on incompatibility
        assert version <= codec.latest_version(batch=batch)


def test_a_batch_keeps_its_commands_in_order_and_one_command_frames_still_decode() -> None:
    commands = [
        Command(Side.ERP, "client", CommandOp.UPSERT, str(n), None, n, n, True,
                (FieldValue("name", None, f"n{n}", True),))
        for n in range(5)
    ]  # fmt: skip
    assert codec.decode_all(codec.encode_batch(commands)) == commands
    assert codec.decode_all(codec.encode(commands[0])) == commands[:1]
    with pytest.raises(codec.CodecError, match="expected one command"):
        codec.decode(codec.encode_batch(commands))


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
