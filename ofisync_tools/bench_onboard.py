"""Benchmark of `ofisync onboard` (issue 29): an agency's years of data on both sides, linked.

Two scratch databases on the stack's own clusters (`<db>_onboard`, with the sync's schema, made
and dropped here) get the sizes agencies have: 100,000 clients and 200,000 files a side (the quick
run: 2,000 and 4,000). Of the clients, 85 % are on both sides with their tax id written otherwise
(`es-b-12345678` for `B12345678`), 10 % on one side only, 5 % twice in the CRM (ambiguous); of
the files, those of paired clients have their number on both sides. The survey (`--dry-run`) and
the linking are timed; every pair must end linked both ways.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from streams.ops import onboard
from streams.settings import Settings
from streams.stack.postgres import Cluster

FULL = (100_000, 200_000)
QUICK = (2_000, 4_000)
SUFFIX = "_onboard"


def scratch(settings: Settings) -> Settings:
    """The stack's settings pointing at the scratch databases."""
    return replace(
        settings,
        erp=replace(settings.erp, dsn=settings.erp.dsn_for(settings.erp.dbname + SUFFIX)),
        crm=replace(settings.crm, dsn=settings.crm.dsn_for(settings.crm.dbname + SUFFIX)),
    )


def _fill(target: Settings, clients: int, files: int) -> None:
    paired, alone = int(clients * 0.85), int(clients * 0.10)
    with psycopg.connect(target.erp.dsn) as erp:
        erp.execute(
            "INSERT INTO clientes (id, nombre, nif, telefono, email, sincronizar_crm)"
            " SELECT g, 'Cliente ' || g, 'B' || lpad(g::text, 8, '0'), '600' || g,"
            "  'c' || g || '@ov.es', g %% 3 <> 0 FROM generate_series(1, %s) g",
            (clients,),
        )
        erp.execute(
            "INSERT INTO expedientes (id, numero, cliente_id, descripcion)"
            " SELECT g, 'N' || g, (g - 1) %% %s + 1, 'Viaje ' || g FROM generate_series(1, %s) g",
            (clients, files),
        )
        erp.execute("SELECT setval('clientes_id_seq', %s), setval('expedientes_id_seq', %s)",
                    (clients, files))  # fmt: skip
    with psycopg.connect(target.crm.dsn) as crm:
        crm.execute(
            "INSERT INTO accounts (id, name, tax_id, phone)"
            " SELECT g, 'Cuenta ' || g, CASE"
            "   WHEN g <= %(paired)s THEN 'es-b-' || lpad(g::text, 8, '0')"
            "   WHEN g <= %(paired)s + %(alone)s THEN 'D' || lpad(g::text, 8, '0')"
            "   ELSE 'B' || lpad((g - %(alone)s - %(paired)s)::text, 8, '0') END,"
            "  '911' || g FROM generate_series(1, %(clients)s) g",
            {"paired": paired, "alone": alone, "clients": clients},
        )
        crm.execute(
            "INSERT INTO files (id, file_number, account_id, title)"
            " SELECT g, CASE WHEN (g - 1) %% %(clients)s + 1 <= %(paired)s THEN 'N' || g"
            "   ELSE 'CRM-' || g END, (g - 1) %% %(clients)s + 1, 'Oportunidad ' || g"
            " FROM generate_series(1, %(files)s) g",
            {"clients": clients, "paired": paired, "files": files},
        )
        crm.execute("SELECT setval('accounts_id_seq', %s), setval('files_id_seq', %s)",
                    (clients, files))  # fmt: skip


def run(
    settings: Settings, quick: bool, say: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Makes the scratch databases, fills them, times the survey and the linking, checks the
    pairs, and drops the databases."""
    clients, files = QUICK if quick else FULL
    target = scratch(settings)
    result: dict[str, Any] = {"clients_per_side": clients, "files_per_side": files}
    _drop(settings, target)  # what a run cut short left behind
    try:
        for db in target.databases:
            Cluster(target, db).ensure_database()
        say(f"onboarding: {clients:,} clients and {files:,} files a side")
        _fill(target, clients, files)
        started = time.monotonic()
        with psycopg.connect(target.erp.dsn) as erp, psycopg.connect(target.crm.dsn) as crm:
            found = onboard.survey(erp, crm)
        result["survey_s"] = round(time.monotonic() - started, 1)
        counts = found.as_json()["counts"]
        result["planned"] = counts
        started = time.monotonic()
        result["done"] = onboard.onboard(
            target, lambda what, n, total: say(f"{what} {n:,}/{total:,}")
        )
        result["link_s"] = round(time.monotonic() - started, 1)
        linked = result["done"]["linked"]
        result["linked_per_s"] = round(linked / result["link_s"], 1) if result["link_s"] else None
        with psycopg.connect(target.erp.dsn) as erp, psycopg.connect(target.crm.dsn) as crm:
            both = {
                "clients": _linked_both_ways(erp, crm, "clientes", "crm_id", "accounts", "erp_id"),
                "files": _linked_both_ways(erp, crm, "expedientes", "crm_id", "files", "erp_id"),
            }
        result["linked_both_ways"] = both
        result["clean"] = (
            both["clients"] == counts["clients link"]
            and both["files"] == counts["files link"]
            and result["done"]["refused"] == 0
        )
    finally:
        _drop(settings, target)
    return result


def _linked_both_ways(
    erp: psycopg.Connection[Any],
    crm: psycopg.Connection[Any],
    erp_table: str,
    erp_link: str,
    crm_table: str,
    crm_link: str,
) -> int:
    ours = dict(
        erp.execute(
            sql.SQL("SELECT id, {} FROM {} WHERE {} IS NOT NULL").format(
                sql.Identifier(erp_link), sql.Identifier(erp_table), sql.Identifier(erp_link)
            )
        ).fetchall()
    )
    theirs = dict(
        crm.execute(
            sql.SQL("SELECT {}, id FROM {} WHERE {} IS NOT NULL").format(
                sql.Identifier(crm_link), sql.Identifier(crm_table), sql.Identifier(crm_link)
            )
        ).fetchall()
    )
    return sum(1 for erp_id, crm_id in ours.items() if theirs.get(erp_id) == crm_id)


def _drop(settings: Settings, target: Settings) -> None:
    for db, scratch_db in zip(settings.databases, target.databases, strict=True):
        with psycopg.connect(db.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(scratch_db.dbname)
                )
            )
