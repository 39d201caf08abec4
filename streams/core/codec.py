"""Command serialization: Avro (fastavro) with the schemas in schemas/command/v<N>.avsc.

Commands are stored where they wait or travel off the hot path: parked changes, dead letters,
and what `ofisync replay` and `ofisync dlq retry` send to the worker's command topics. Frame: one
zero byte, one byte of schema version, then the Avro body. Commands are written one per frame
(`ofisync.Command`, now v7: the reapply and align operations and each value's clocks). The
batches the two-hop worker wrote (v4 `ofisync.CommandBatch`, v5 `ofisync.Commands`, v6
`ofisync.CommandFrame`) are still read, so command topics written before an upgrade drain. A
reader resolves an older writer version to the newest schema of the same name, so schemas evolve
compatibly (tested); a new layout takes a new name, and every layout stays readable.
"""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import orjson

from streams.core.model import Command, CommandOp, FieldValue, Side

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "command"
MAGIC = 0


class CodecError(ValueError):
    pass


BATCHES = ("ofisync.CommandBatch", "ofisync.Commands", "ofisync.CommandFrame")


@cache
def schemas() -> dict[int, Any]:
    found = {}
    for path in SCHEMA_DIR.glob("v*.avsc"):
        found[int(path.stem[1:])] = fastavro.parse_schema(json.loads(path.read_text()))
    if not found:
        raise CodecError(f"no Avro schemas in {SCHEMA_DIR}")
    return found


@cache
def is_batch(version: int) -> bool:
    return schemas()[version]["name"] in BATCHES


@cache
def reader_of(version: int) -> int:
    """The newest version of the same name as `version`: the one its frames are read as."""
    name = schemas()[version]["name"]
    return max(v for v, schema in schemas().items() if schema["name"] == name)


@cache
def latest_version(batch: bool = False) -> int:
    """The newest schema of one command (or, `batch`, of a batch of commands)."""
    return max(v for v in schemas() if is_batch(v) == batch)


def _about(cmd: Command) -> dict[str, Any]:
    """Every field of a command's record but its values (the same in every version)."""
    return {
        "source": cmd.source.value,
        "entity": cmd.entity,
        "op": cmd.op.value,
        "source_key": cmd.source_key,
        "link_key": cmd.link_key,
        "lsn": cmd.lsn,
        "commit_us": cmd.commit_us,
        "full": cmd.full,
        "actor": cmd.actor,
        "replay": cmd.replay,
    }


def _record(cmd: Command) -> dict[str, Any]:
    """A one-command record (v7), a record per value."""
    values = [
        {
            "field": v.field,
            "before": v.before,
            "after": v.after,
            "changed": v.changed,
            "base": v.base,
            "clock": v.clock,
        }
        for v in cmd.values
    ]
    return _about(cmd) | {"values": values}


def _frame(version: int, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(bytes((MAGIC, version)))
    fastavro.schemaless_writer(buf, schemas()[version], record)
    return buf.getvalue()


def encode(cmd: Command) -> bytes:
    return _frame(latest_version(), _record(cmd))


def decode_record(data: bytes) -> dict[str, Any]:
    """The frame's Avro record (a command, or a batch: {"commands": [...]}), as the newest
    schema of its kind reads it."""
    if len(data) < 2 or data[0] != MAGIC:
        raise CodecError("not an ofisync command frame (bad magic byte)")
    version = data[1]
    writer = schemas().get(version)
    if writer is None:
        raise CodecError(f"command schema v{version} is unknown to this worker; upgrade it")
    newest = reader_of(version)
    # Resolving a schema against itself gives the same record, only slower.
    reader = None if newest == version else schemas()[newest]
    try:
        record = fastavro.schemaless_reader(io.BytesIO(data[2:]), writer, reader)
    except Exception as exc:  # truncated or corrupt bodies fail in many ways inside fastavro
        raise CodecError(f"the command v{version} body does not decode: {exc!r}") from exc
    if not isinstance(record, dict):
        raise CodecError("a command frame must hold an Avro record")
    return record


def decode_all(data: bytes) -> list[Command]:
    """The commands of a frame: one, or a batch."""
    r = decode_record(data)
    if "field_sets" in r:
        return [_command(c, _json_values(c, r["field_sets"])) for c in r["commands"]]
    if "commands" in r:
        return [_command(c, _values(c)) for c in r["commands"]]
    return [_command(r, _values(r))]


def decode(data: bytes) -> Command:
    """The command of a one-command frame."""
    commands = decode_all(data)
    if len(commands) != 1:
        raise CodecError(f"expected one command, the frame holds {len(commands)}")
    return commands[0]


_SIDES = {side.value: side for side in Side}
_OPS = {op.value: op for op in CommandOp}


def _values(r: dict[str, Any]) -> tuple[FieldValue, ...]:
    if "values" in r:
        return tuple(
            FieldValue(
                v["field"], v["before"], v["after"], v["changed"], v.get("base"), v.get("clock")
            )
            for v in r["values"]
        )
    return _field_values(r["fields"], r["after"], r["changed"], r["before_at"], r["before"])


_SCALARS = frozenset((str, int, bool, type(None)))


def _json_values(r: dict[str, Any], field_sets: list[list[str]]) -> tuple[FieldValue, ...]:
    at = r["fields_at"]
    if not 0 <= at < len(field_sets):
        raise CodecError("a command's fields_at points past the frame's field sets")
    try:
        after, before = orjson.loads(r["after"]), orjson.loads(r["before"])
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"a command's values are not JSON: {exc}") from exc
    if not isinstance(after, list) or not isinstance(before, list):
        raise CodecError("a command's values are not JSON arrays")
    if not _SCALARS.issuperset(map(type, after)) or not _SCALARS.issuperset(map(type, before)):
        raise CodecError("a command's values must be null, strings, booleans or integers")
    return _field_values(field_sets[at], after, r["changed"], r["before_at"], before)


def _field_values(
    fields: list[str],
    after: list[Any],
    changed: list[bool],
    before_at: list[int],
    before: list[Any],
) -> tuple[FieldValue, ...]:
    """Values from parallel arrays, a before only at `before_at` (v5, v6)."""
    if not len(fields) == len(after) == len(changed) or len(before_at) != len(before):
        raise CodecError("a command's value arrays differ in length")
    if any(not 0 <= at < len(after) for at in before_at):
        raise CodecError("a command's before_at points past its fields")
    full_before = list(after)
    for at, value in zip(before_at, before, strict=True):
        full_before[at] = value
    return tuple(map(FieldValue, fields, full_before, after, changed))


def _command(r: dict[str, Any], values: tuple[FieldValue, ...]) -> Command:
    return Command(
        source=_SIDES[r["source"]],
        entity=r["entity"],
        op=_OPS[r["op"]],
        source_key=r["source_key"],
        link_key=r["link_key"],
        lsn=r["lsn"],
        commit_us=r["commit_us"],
        full=r["full"],
        values=values,
        actor=r.get("actor"),
        replay=bool(r.get("replay", False)),
    )
