"""Command serialization: Avro (fastavro) with the schemas in schemas/command/v<N>.avsc.

Frame: one zero byte, one byte of schema version, then the Avro body. Readers resolve any
older writer version to the newest schema, so schemas evolve compatibly (tested).
"""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

from streams.model import Command, CommandOp, FieldValue, Side

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas" / "command"
MAGIC = 0


class CodecError(ValueError):
    pass


@cache
def schemas() -> dict[int, Any]:
    found = {}
    for path in SCHEMA_DIR.glob("v*.avsc"):
        found[int(path.stem[1:])] = fastavro.parse_schema(json.loads(path.read_text()))
    if not found:
        raise CodecError(f"no Avro schemas in {SCHEMA_DIR}")
    return found


def latest_version() -> int:
    return max(schemas())


def encode(cmd: Command) -> bytes:
    version = latest_version()
    record = {
        "source": cmd.source.value,
        "entity": cmd.entity,
        "op": cmd.op.value,
        "source_key": cmd.source_key,
        "link_key": cmd.link_key,
        "lsn": cmd.lsn,
        "commit_us": cmd.commit_us,
        "full": cmd.full,
        "values": [
            {"field": v.field, "before": v.before, "after": v.after, "changed": v.changed}
            for v in cmd.values
        ],
        "actor": cmd.actor,
        "replay": cmd.replay,
    }
    buf = io.BytesIO()
    buf.write(bytes((MAGIC, version)))
    fastavro.schemaless_writer(buf, schemas()[version], record)
    return buf.getvalue()


def decode_record(data: bytes) -> dict[str, Any]:
    if len(data) < 2 or data[0] != MAGIC:
        raise CodecError("not an ofisync command frame (bad magic byte)")
    version = data[1]
    writer = schemas().get(version)
    if writer is None:
        raise CodecError(f"command schema v{version} is unknown to this worker; upgrade it")
    try:
        record = fastavro.schemaless_reader(
            io.BytesIO(data[2:]), writer, schemas()[latest_version()]
        )
    except Exception as exc:  # truncated or corrupt bodies fail in many ways inside fastavro
        raise CodecError(f"the command v{version} body does not decode: {exc!r}") from exc
    if not isinstance(record, dict):
        raise CodecError("a command frame must hold an Avro record")
    return record


def decode(data: bytes) -> Command:
    r = decode_record(data)
    return Command(
        source=Side(r["source"]),
        entity=r["entity"],
        op=CommandOp(r["op"]),
        source_key=r["source_key"],
        link_key=r["link_key"],
        lsn=r["lsn"],
        commit_us=r["commit_us"],
        full=r["full"],
        values=tuple(
            FieldValue(v["field"], v["before"], v["after"], v["changed"]) for v in r["values"]
        ),
        actor=r.get("actor"),
        replay=bool(r.get("replay", False)),
    )
