"""Onboard (operations): `ofisync onboard`, the first activation over data both applications
already hold. Records that exist on both sides are linked instead of created again.

A survey reads every unlinked record of both sides (clients with their tax id, files with their
number) and pairs them (streams/core/matching.py): exact keys only, one record on each side. A
file pairs only with a file of the same client pair. Keys held by several records are ambiguous
and left for a person; the rest would be created on the other side by the sync.

`--dry-run` reports that, counts and every record. Without it the pairs are linked in batches
through the sink itself, as the live sync links a new record it finds already there: OfiViaje's
record is pushed whole, the CRM's unlinked record with the same key takes the link, each field
that differs is decided by the conflict policy (files: OfiViaje's) and recorded, the winner
written to both sides, and the OfiViaje client checked for sync. Each batch commits; a run cut
short is taken up again by running it again (a record linked on one side only is finished).
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from streams.apply.connections import SinkConnections, keep_commit_time, origin_names
from streams.apply.results import BatchResult
from streams.apply.sink import Sink
from streams.apply.statements import RESOLVED_CLOCKS
from streams.core.contract import CLIENT, FILE
from streams.core.mapping import Mapping as SyncMapping
from streams.core.matching import Matches, match
from streams.core.model import Command, CommandOp, Entity, Side, canonical
from streams.core.rules import full_values
from streams.ops.verify import read_mapping
from streams.secrets import Role, login_dsn
from streams.settings import Settings

BATCH = 1000

Progress = Callable[[str, int, int], None]  # what, done, total


@dataclass
class Survey:
    clients: Matches[str]
    files: Matches[str]
    # File pairs whose clients are not a pair: (OfiViaje file, CRM file, number).
    files_apart: list[tuple[int, int, str]]
    checked: set[int]  # OfiViaje clients checked for sync (unlinked ones)
    # Records linked on one side only, by a run cut short: (entity, OfiViaje id).
    half_linked: list[tuple[str, int]]

    def as_json(self) -> dict[str, Any]:
        def side_only(found: list[tuple[int, str | None]]) -> list[dict[str, Any]]:
            return [{"id": i, "key": k} for i, k in found]

        def summary(entity: str, m: Matches[str], create_in_crm: list[Any]) -> dict[str, Any]:
            return {
                "link": [{"erp_id": e, "crm_id": c, "key": k} for e, c, k in m.pairs],
                "ambiguous": [{"key": k, "erp_ids": e, "crm_ids": c} for k, e, c in m.ambiguous],
                "create_in_crm": side_only(create_in_crm),
                "create_in_erp": side_only(m.crm_only),
            }

        clients = summary(
            "client", self.clients, [r for r in self.clients.erp_only if r[0] in self.checked]
        )
        clients["stay_unchecked"] = side_only(
            [r for r in self.clients.erp_only if r[0] not in self.checked]
        )
        files = summary("file", self.files, self.files.erp_only)
        files["clients_differ"] = [
            {"erp_id": e, "crm_id": c, "key": k} for e, c, k in self.files_apart
        ]
        return {
            "clients": clients,
            "files": files,
            "to_finish": [{"entity": e, "erp_id": i} for e, i in self.half_linked],
            "counts": {
                f"{entity} {what}": len(rows)
                for entity, found in (("clients", clients), ("files", files))
                for what, rows in found.items()
            },
        }


def survey(erp: psycopg.Connection[Any], crm: psycopg.Connection[Any]) -> Survey:
    """Every unlinked record of both sides, paired by key (reads only)."""
    unflagged = "ofisync_deleted_at IS NULL"
    erp_clients = _rows(
        erp,
        "SELECT id, ofisync.tax_key(nif), sincronizar_crm FROM clientes"
        f" WHERE crm_id IS NULL AND {unflagged}",
    )
    crm_accounts = _rows(
        crm,
        f"SELECT id, ofisync.tax_key(tax_id) FROM accounts WHERE erp_id IS NULL AND {unflagged}",
    )
    clients = match(((r[0], r[1]) for r in erp_clients), ((r[0], r[1]) for r in crm_accounts))
    erp_files = _rows(
        erp, f"SELECT id, numero, cliente_id FROM expedientes WHERE crm_id IS NULL AND {unflagged}"
    )
    crm_files = _rows(
        crm, f"SELECT id, file_number, account_id FROM files WHERE erp_id IS NULL AND {unflagged}"
    )
    files = match(((r[0], r[1]) for r in erp_files), ((r[0], r[1]) for r in crm_files))
    # A file pairs only within a client pair (linked before, or paired now).
    account_of = dict(_rows(erp, "SELECT id, crm_id FROM clientes WHERE crm_id IS NOT NULL"))
    account_of.update((e, c) for e, c, _ in clients.pairs)
    client_of = {r[0]: r[2] for r in erp_files}
    account_of_file = {r[0]: r[2] for r in crm_files}
    apart = {
        (e, c, k) for e, c, k in files.pairs if account_of.get(client_of[e]) != account_of_file[c]
    }
    files.pairs = [p for p in files.pairs if p not in apart]  # a set: 200,000 pairs and more
    half = [
        ("client", int(r[0]))
        for r in _rows(
            erp,
            "SELECT id FROM clientes WHERE crm_id IS NULL AND id = ANY(%s)",
            ([r[0] for r in _rows(crm, "SELECT erp_id FROM accounts WHERE erp_id IS NOT NULL")],),
        )
    ] + [
        ("file", int(r[0]))
        for r in _rows(
            erp,
            "SELECT id FROM expedientes WHERE crm_id IS NULL AND id = ANY(%s)",
            ([r[0] for r in _rows(crm, "SELECT erp_id FROM files WHERE erp_id IS NOT NULL")],),
        )
    ]
    finishing = {(e, i) for e, i in half}
    clients.erp_only = [r for r in clients.erp_only if ("client", r[0]) not in finishing]
    files.erp_only = [r for r in files.erp_only if ("file", r[0]) not in finishing]
    checked = {int(r[0]) for r in erp_clients if r[2]}
    return Survey(clients, files, sorted(apart), checked, half)


def _rows(conn: psycopg.Connection[Any], query: str, params: Any = None) -> list[tuple[Any, ...]]:
    return list(conn.execute(query, params).fetchall())


def csv_text(found: Survey) -> str:
    """The survey as CSV: entity, action, OfiViaje id, CRM id, key."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["entity", "action", "erp_id", "crm_id", "key"])
    document = found.as_json()
    for entity in ("clients", "files"):
        for action, rows in document[entity].items():
            for row in rows:
                erp_ids = row.get("erp_ids", [row.get("erp_id", row.get("id"))])
                crm_ids = row.get("crm_ids", [row.get("crm_id")])
                if action == "create_in_erp":
                    erp_ids, crm_ids = [None], [row["id"]]
                writer.writerow(
                    [entity, action, " ".join(map(_text, erp_ids)), " ".join(map(_text, crm_ids)),
                     row.get("key")]
                )  # fmt: skip
    return out.getvalue()


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# --- linking -------------------------------------------------------------------------------


def onboard(settings: Settings, progress: Progress) -> dict[str, int]:
    """Links every pair of the survey (see the module docstring); what it did, counted."""
    with (
        psycopg.connect(settings.erp.dsn) as erp,
        psycopg.connect(settings.crm.dsn) as crm,
    ):
        found = survey(erp, crm)
        mapping = read_mapping(erp)
    return asyncio.run(_link(settings, found, mapping, progress))


async def _link(
    settings: Settings, found: Survey, mapping: SyncMapping, progress: Progress
) -> dict[str, int]:
    dsns = {db.side: login_dsn(settings, db, Role.SINK) for db in settings.databases}
    origins = {side: origin_names(settings.tenant, side) for side in Side}
    sinks = {
        side: Sink(
            side,
            SinkConnections(side, dsns[side.value], dsns[side.other.value], origins),
            settings.conflict_policy,
            lambda: mapping,
        )
        for side in Side
    }
    done: dict[str, int] = {"linked": 0, "decided": 0, "waiting": 0, "refused": 0}
    try:
        with psycopg.connect(settings.erp.dsn) as erp:
            half = {(e, i) for e, i in found.half_linked}
            for entity, pairs in (
                (CLIENT, [e for e, _, _ in found.clients.pairs]),
                (FILE, [e for e, _, _ in found.files.pairs]),
            ):
                ids = pairs + [i for e, i in sorted(half) if e == entity.name]
                for start in range(0, len(ids), BATCH):
                    batch = ids[start : start + BATCH]
                    commands = list(_pushes(erp, entity, batch))
                    result = await sinks[Side.CRM].apply(commands)
                    await sinks[Side.ERP].apply(result.aligns)
                    if entity is CLIENT:
                        await _check(
                            await sinks[Side.CRM].connections.source(),
                            [int(cmd.source_key) for cmd, _, _ in result.links],
                        )
                    _count(done, result)
                    progress(f"{entity.name}s", min(start + BATCH, len(ids)), len(ids))
    finally:
        for sink in sinks.values():
            await sink.close()
    return done


async def _check(erp: psycopg.AsyncConnection[Any], clients: list[int]) -> None:
    """Clients now shared are checked for sync (some were unchecked: the CRM has them), on the
    sink's own session with OfiViaje: the sync's write, nothing to send."""
    if clients:
        async with erp.transaction():
            await keep_commit_time(erp)
            await erp.execute(
                "UPDATE clientes SET sincronizar_crm = true WHERE id = ANY(%s)"
                " AND NOT sincronizar_crm",
                (clients,),
            )


def _count(done: dict[str, int], result: BatchResult) -> None:
    done["linked"] += len(result.links)
    done["decided"] += result.conflicts
    done["waiting"] += result.parked
    done["refused"] += len(result.dead)


def _pushes(erp: psycopg.Connection[Any], entity: Entity, ids: Sequence[int]) -> Iterator[Command]:
    """OfiViaje's records pushed whole, each field with its clock, as the sync pushes a record
    it sees for the first time."""
    names = [f.erp for f in entity.fields]
    cur = erp.execute(
        f"SELECT id, {', '.join(names)}, {RESOLVED_CLOCKS} FROM"
        f" {entity.erp_table} WHERE id = ANY(%s) ORDER BY id",
        (list(ids),),
    )
    now_us = int(time.time() * 1_000_000)
    for record_id, *values, clocks in cur:
        row = {
            f.erp: canonical(f.kind_on(Side.ERP), v)
            for f, v in zip(entity.fields, values, strict=True)
        }
        yield Command(
            Side.ERP, entity.name, CommandOp.UPSERT, str(record_id), None, 0, now_us, full=True,
            values=full_values(entity, Side.ERP, row, {k: int(v) for k, v in (clocks or {}).items()
                                                        if v is not None}),
            actor="ofisync onboard",
        )  # fmt: skip
