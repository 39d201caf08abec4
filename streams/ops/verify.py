"""Verify (operations): both databases compared record by record over the linked pairs.

Reads every linked row of each entity from both sides (one query per table and side), and
compares them with the same rules the sync applies (`compare_pair`, pure): field
correspondence, vocabularies, sellers and branches through the mapping (a header-default
fallback on either side is consistent), parents through their links, both record numbers,
placeholders zeroed by a PNR capture, documents by the SHA-256 of their content. A link that
does not lead back is reported as linked on one side only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from streams.core.contract import CLIENT, DOCUMENT, FILE, SEGMENT
from streams.core.mapping import Mapping as SyncMapping
from streams.core.mapping import translate_word
from streams.core.model import Canonical, ChangeEvent, Entity, Op, Side, Via, canonical
from streams.settings import Settings

Row = Mapping[str, Canonical]


@dataclass(frozen=True)
class Difference:
    entity: str
    erp_id: int
    crm_id: int
    field: str  # "erp column / crm column"
    erp_value: Canonical
    crm_value: Canonical


@dataclass(frozen=True)
class OneSided:
    entity: str
    side: str  # where the link is
    id: int
    link: int  # the id it points at on the other side
    problem: str


@dataclass(frozen=True)
class Report:
    pairs: dict[str, int]
    differences: list[Difference]
    one_sided: list[OneSided]
    paused: list[Paused]

    @property
    def clean(self) -> bool:
        return not self.differences and not self.one_sided

    def as_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "pairs": self.pairs,
            "differences": [asdict(d) for d in self.differences],
            "one_sided": [asdict(o) for o in self.one_sided],
            "paused": [asdict(p) for p in self.paused],
        }


@dataclass(frozen=True)
class Paused:
    """A linked pair OfiViaje no longer syncs (its box unchecked): not compared, not drift."""

    entity: str
    erp_id: int
    crm_id: int


@dataclass(frozen=True)
class Links:
    """Id maps of the parents, so references compare as the sync resolves them."""

    erp_to_crm: Mapping[str, Mapping[int, int]]  # entity → ERP id → CRM id


def compare_pair(
    entity: Entity, erp: Row, crm: Row, mapping: SyncMapping, links: Links, skip: Iterable[str] = ()
) -> list[Difference]:
    """The fields of one linked pair that do not hold corresponding values."""
    out = []
    skipped = set(skip)
    for f in entity.fields:
        if f.erp in skipped:
            continue
        erp_value, crm_value = erp.get(f.erp), crm.get(f.crm)
        if f.via is Via.NUMBER:
            consistent = (
                erp.get(entity.link_number(Side.ERP) or "") == crm_value
                and crm.get(entity.link_number(Side.CRM) or "") == erp_value
            )
        elif f.via is Via.REF:
            assert f.ref is not None
            expected = links.erp_to_crm[f.ref].get(_int(erp_value) or 0)
            consistent = expected == _int(crm_value)
        elif f.via in (Via.SELLER, Via.BRANCH):
            up = mapping.translate(f.via, erp_value, Side.CRM)
            down = mapping.translate(f.via, crm_value, Side.ERP)
            # A value with no mapping took the header default when it crossed: not drift.
            consistent = (
                up.value == crm_value
                or down.value == erp_value
                or up.fallback is not None
                or down.fallback is not None
            )
        elif f.via in (Via.FILE_STATUS, Via.TICKET_KIND):
            consistent = translate_word(f.via, erp_value, Side.CRM) == crm_value
        else:
            consistent = erp_value == crm_value
        if not consistent:
            out.append(
                Difference(
                    entity.name, _id(erp), _id(crm), f"{f.erp} / {f.crm}", erp_value, crm_value
                )
            )
    return out


def _id(row: Row) -> int:
    return int(row["id"])  # type: ignore[arg-type]


def _int(value: Canonical) -> int | None:
    return None if value is None or isinstance(value, bool) else int(value)


# --- reading ---------------------------------------------------------------------------


def _columns(entity: Entity, side: Side) -> list[str]:
    names = ["id", *(f.name(side) for f in entity.fields)]
    opt_in = entity.erp_opt_in if side is Side.ERP else None
    for extra in (entity.link(side), entity.link_number(side), *entity.marker(side), opt_in):
        if extra and extra not in names:
            names.append(extra)
    return names


def _read(
    conn: psycopg.Connection[Any], entity: Entity, side: Side, extra: str = ""
) -> dict[int, dict[str, Canonical]]:
    names = _columns(entity, side)
    kinds = {f.name(side): f.kind_on(side) for f in entity.fields}
    link = entity.link(side)
    where = sql.SQL("WHERE {} IS NOT NULL").format(sql.Identifier(link)) if link else sql.SQL("")
    query = sql.SQL("SELECT {} FROM {} {} {}").format(
        sql.SQL(", ").join(sql.Identifier(n) for n in names),
        sql.Identifier(entity.table(side)),
        where,
        sql.SQL(extra),
    )
    rows = {}
    with conn.cursor() as cur:
        for values in cur.execute(query):
            row = {
                n: canonical(kinds[n], v) if n in kinds else _plain(v)
                for n, v in zip(names, values, strict=True)
            }
            rows[int(values[0])] = row
    return rows


def _plain(value: Any) -> Canonical:
    return value if isinstance(value, str | int | bool) or value is None else str(value)


def read_mapping(erp: psycopg.Connection[Any]) -> SyncMapping:
    """The mapping as the sync sees it, folded from OfiViaje's tables directly."""
    mapping = SyncMapping()
    for table, columns in (
        ("vendedores", "id, crm_usuario"),
        ("sucursales", "id, crm_agencia_id"),
        (
            "config_crm",
            "id, sucursal_id, vendedor_id, tipo_expediente, serie, ofisync_zero_placeholders",
        ),
    ):
        cur = erp.execute(f"SELECT {columns} FROM {table}")
        names = [d.name for d in cur.description or ()]
        for values in cur:
            row = dict(zip(names, (_plain(v) for v in values), strict=True))
            mapping.fold(ChangeEvent(Side.ERP, "public", table, Op.READ, "", None, row, 0, 0, None))
    return mapping


def verify(settings: Settings) -> Report:
    with (
        psycopg.connect(settings.erp.dsn, connect_timeout=5) as erp,
        psycopg.connect(settings.crm.dsn, connect_timeout=5) as crm,
    ):
        for conn in (erp, crm):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        mapping = read_mapping(erp)
        rows = {
            e.name: (_read(erp, e, Side.ERP), _read(crm, e, Side.CRM))
            for e in (CLIENT, FILE, SEGMENT)
        }
        # Only uploaded documents are expected in the CRM (a G one is on its way).
        rows[DOCUMENT.name] = (
            _read(erp, DOCUMENT, Side.ERP, "AND estado_sync = 'O'"),
            _read(crm, DOCUMENT, Side.CRM),
        )
        pnr_files = {
            int(r[0])
            for r in erp.execute(
                "SELECT DISTINCT expediente_id FROM billetes WHERE origen_registro = 'pnr'"
            )
        }
        erp_digests, crm_digests = _digests(erp, crm, rows[DOCUMENT.name][0])
    links = Links(
        {
            e.name: {i: int(r[e.erp_link]) for i, r in rows[e.name][0].items()}  # type: ignore[arg-type]
            for e in (CLIENT, FILE)
        }
    )
    report = Report({}, [], [], [])
    for entity in (CLIENT, FILE, SEGMENT, DOCUMENT):
        erp_rows, crm_rows = rows[entity.name]
        matched = 0
        for erp_id, erp_row in erp_rows.items():
            if any(erp_row.get(c) != v for c, v in entity.marker(Side.ERP).items()):
                continue  # no longer a placeholder: the real ticket is the agency's own
            crm_id = _int(erp_row[entity.erp_link]) or 0
            if entity.erp_opt_in and not erp_row.get(entity.erp_opt_in):
                report.paused.append(Paused(entity.name, erp_id, crm_id))
                continue  # unchecked: it keeps its link, and nothing crosses either way
            crm_row = crm_rows.get(crm_id)
            back = entity.crm_link
            if crm_row is None:
                problem = f"{entity.crm_table} {crm_id} does not exist"
            elif back and _int(crm_row.get(back)) != erp_id:
                problem = f"{entity.crm_table} {crm_id} links to {crm_row.get(back)}"
            else:
                problem = ""
            if problem:
                report.one_sided.append(OneSided(entity.name, "erp", erp_id, crm_id, problem))
                continue
            assert crm_row is not None
            matched += 1
            zeroed = entity is SEGMENT and erp_row.get("expediente_id") in pnr_files
            report.differences.extend(
                compare_pair(
                    entity, erp_row, crm_row, mapping, links, ["importe"] if zeroed else []
                )
            )
            if entity is DOCUMENT and erp_digests.get(erp_id) != crm_digests.get(crm_id):
                report.differences.append(
                    Difference(entity.name, erp_id, crm_id, "contenido / content",
                               erp_digests.get(erp_id), crm_digests.get(crm_id))
                )  # fmt: skip
        report.pairs[entity.name] = matched
        if entity.crm_link is None or entity is DOCUMENT:
            continue  # nothing links back / a re-marked document is re-uploading
        for crm_id, crm_row in crm_rows.items():
            erp_id = _int(crm_row.get(entity.crm_link)) or 0
            if erp_id not in erp_rows:
                report.one_sided.append(
                    OneSided(entity.name, "crm", crm_id, erp_id,
                             f"{entity.erp_table} {erp_id} does not link back")
                )  # fmt: skip
    return report


def _digests(
    erp: psycopg.Connection[Any], crm: psycopg.Connection[Any], erp_docs: Mapping[int, Row]
) -> tuple[dict[int, str], dict[int, str]]:
    """SHA-256 of the content of each uploaded document, on each side, by id."""
    crm_ids = [_int(r["crm_documento_id"]) for r in erp_docs.values()]
    return (
        {
            int(i): str(d)
            for i, d in erp.execute(
                "SELECT id, encode(sha256(contenido), 'hex') FROM documentos WHERE id = ANY(%s)",
                (list(erp_docs),),
            )
        },
        {
            int(i): str(d)
            for i, d in crm.execute(
                "SELECT id, encode(sha256(content), 'hex') FROM documents WHERE id = ANY(%s)",
                (crm_ids,),
            )
        },
    )
