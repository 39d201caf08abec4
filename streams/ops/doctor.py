"""Doctor (operations): configuration problems found before they bite.

Each check names what it looked at, whether it holds, and what to do when it does not:
databases (logical WAL, commit timestamps, publication, slot and its retained WAL, write
triggers made for the tables' current columns), Kafka
(topics, compacted configuration topics), Connect (connectors and tasks running), the worker
(running, mapping loaded), and the mapping itself (header defaults, sellers, branches, CRM users
and agencies that map to nothing).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from streams.apply.connections import ORIGIN_SERVER_VERSION, origin_names
from streams.core.model import Side
from streams.core.topics import Topics
from streams.ops.observe import WAL_BOUND
from streams.secrets import Role, role_name
from streams.settings import Database, Settings


@dataclass(frozen=True)
class Check:
    area: str
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _database(settings: Settings, db: Database) -> Iterator[Check]:
    area = db.title
    try:
        conn = psycopg.connect(db.dsn, connect_timeout=5)
    except psycopg.OperationalError as exc:
        yield Check(
            area,
            "reachable",
            False,
            str(exc).strip().splitlines()[0],
            f"start it (`ofisync up`) or fix {db.variable}",
        )
        return
    with conn:
        yield Check(area, "reachable", True, db.safe_dsn)
        yield from _echoes(settings, db, conn)
        yield write_triggers(area, conn)
        wal = _one(conn, "SHOW wal_level")
        yield Check(
            area,
            "wal_level",
            wal == "logical",
            f"wal_level = {wal}",
            "set wal_level = logical and restart PostgreSQL",
        )
        commit_ts = _one(conn, "SHOW track_commit_timestamp")
        yield Check(
            area,
            "track_commit_timestamp",
            commit_ts == "on",
            f"track_commit_timestamp = {commit_ts}",
            "set track_commit_timestamp = on (conflict clocks need it) and restart",
        )
        name = settings.slot_name(db.side)
        published = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_publication_tables WHERE pubname = %s", (name,)
            )
        }
        yield Check(
            area,
            f"publication {name}",
            bool(published),
            f"{len(published)} table(s) published",
            "run `ofisync up` to create it",
        )
        slot = conn.execute(
            "SELECT active, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (name,),
        ).fetchone()
        if slot is None:
            yield Check(
                area,
                f"slot {name}",
                False,
                "missing",
                "register the connector (`ofisync up`); it creates the slot",
            )
        else:
            yield Check(
                area,
                f"slot {name}",
                bool(slot[0]),
                "streaming" if slot[0] else "no reader",
                "the connector is not reading: check `ofisync status`",
            )
            retained = int(slot[1])
            yield Check(
                area,
                f"slot {name} WAL",
                retained < WAL_BOUND,
                f"{retained:,} bytes retained",
                "the connector lags or is stopped; WAL piles up until it reads",
            )


def _echoes(settings: Settings, db: Database, conn: psycopg.Connection[Any]) -> Iterator[Check]:
    """How the sync's own writes are kept from coming back: on PostgreSQL 16+ the server never
    sends them (replication origins, `origin=none`); before, they come marked and are dropped."""
    area, version = db.title, conn.info.server_version
    shown = _one(conn, "SHOW server_version")
    if version < ORIGIN_SERVER_VERSION:
        yield Check(
            area,
            "echoes",
            True,
            f"PostgreSQL {shown}: the sync's own writes are captured marked and dropped by the"
            " worker (PostgreSQL 16+ would never send them)",
        )
        return
    names = origin_names(settings.tenant, Side(db.side))
    ready = _one(
        conn,
        "SELECT count(*) FROM pg_replication_origin WHERE roname = ANY(%s)"
        " AND has_function_privilege(%s, 'pg_replication_origin_session_setup(text)', 'EXECUTE')",
        (names, role_name(settings, Role.SINK)),
    )
    yield Check(
        area,
        "echoes",
        ready == len(names),
        f"PostgreSQL {shown}: the sync's own writes are never sent ({ready} of {len(names)}"
        " replication origins ready for the sink)",
        "prepare the database again (`ofisync up`, or deploy/production/prepare_databases.py)",
    )
    setting = "max_active_replication_origins" if version >= 180000 else "max_replication_slots"
    slots = int(_one(conn, f"SHOW {setting}"))
    used = int(_one(conn, "SELECT count(*) FROM pg_replication_origin_status"))
    yield Check(
        area,
        setting,
        used < slots,
        f"{used} replication origins in use of {setting} = {slots}",
        f"raise {setting} (the sink's sessions each take one) and restart PostgreSQL",
    )


def write_triggers(area: str, conn: psycopg.Connection[Any]) -> Check:
    """Each synced table's write trigger compares the columns the table had when the database
    was prepared; a table changed since still works, but people's writes to it cost more."""
    stale = [r[0] for r in conn.execute("SELECT ofisync.stale_write_triggers()::text ORDER BY 1")]
    return Check(
        area,
        "write triggers",
        not stale,
        f"columns changed since the database was prepared: {', '.join(stale)}"
        if stale
        else "every synced table's write trigger matches its columns",
        "prepare the database again (`ofisync up`, or deploy/production/prepare_databases.py):"
        " until then people's writes to these tables take the trigger's slower path",
    )


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _kafka(settings: Settings) -> Iterator[Check]:
    topics = Topics(settings.tenant)
    try:
        admin = KafkaAdminClient(bootstrap_servers=str(settings.kafka), client_id="ofisync-doctor")
    except Exception as exc:
        yield Check("Kafka", "reachable", False, str(exc), "start it (`ofisync up`)")
        return
    try:
        yield Check("Kafka", "reachable", True, str(settings.kafka))
        existing = set(admin.list_topics())
        missing = sorted(set(topics.all()) - existing)
        yield Check(
            "Kafka",
            "topics",
            not missing,
            f"missing: {', '.join(missing)}" if missing else f"{len(topics.all())} present",
            "`ofisync up` (or starting the worker) creates them",
        )
        config = [t for t in topics.configuration() if t in existing]
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in config]
        )
        by_topic = described.get("topic", {}) if isinstance(described, dict) else {}
        loose = [
            t
            for t in config
            if "compact" not in str(by_topic.get(t, {}).get("cleanup.policy", {}).get("value"))
        ]
        yield Check(
            "Kafka",
            "configuration topics compacted",
            not loose,
            f"not compacted: {', '.join(loose)}" if loose else "compacted",
            "restart the worker: it sets cleanup.policy=compact",
        )
    finally:
        admin.close()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _connect(settings: Settings) -> Iterator[Check]:
    for side in ("erp", "crm"):
        name = settings.connector_name(side)
        try:
            status = _get(f"{settings.connect_url}/connectors/{name}/status")
        except OSError as exc:
            yield Check(
                "Kafka Connect",
                f"connector {name}",
                False,
                str(exc),
                "start Connect and register it (`ofisync up`)",
            )
            continue
        tasks = status.get("tasks") or []
        running = (
            status["connector"]["state"] == "RUNNING"
            and bool(tasks)
            and all(t["state"] == "RUNNING" for t in tasks)
        )
        states = ", ".join(t["state"] for t in tasks) or "no tasks"
        yield Check(
            "Kafka Connect",
            f"connector {name}",
            running,
            f"{status['connector']['state']} ({states})",
            "`ofisync up` restarts failed tasks; the Connect log says why they failed",
        )


def _worker(settings: Settings) -> Iterator[Check]:
    try:
        health = _get(f"{settings.web_url}/health")
    except OSError as exc:
        yield Check("worker", "running", False, str(exc), "start it (`ofisync up`)")
        return
    yield Check(
        "worker",
        "running",
        health.get("state") == "running",
        str(health.get("state")),
        "see the worker log",
    )
    yield Check(
        "worker",
        "mapping loaded",
        bool(health.get("mapping_loaded")),
        "loaded" if health.get("mapping_loaded") else "not loaded",
        "the worker waits for the configuration topics; check Kafka",
    )


def _mapping(settings: Settings) -> Iterator[Check]:
    try:
        with (
            psycopg.connect(settings.erp.dsn, connect_timeout=5) as erp,
            psycopg.connect(settings.crm.dsn, connect_timeout=5) as crm,
        ):
            defaults = erp.execute(
                "SELECT sucursal_id, vendedor_id, tipo_expediente, serie FROM config_crm"
            ).fetchone()
            sellers = erp.execute("SELECT id, nombre, crm_usuario FROM vendedores").fetchall()
            branches = erp.execute("SELECT id, nombre, crm_agencia_id FROM sucursales").fetchall()
            users = {r[0] for r in crm.execute("SELECT username FROM users")}
            agencies = {r[0] for r in crm.execute("SELECT id FROM agencies")}
    except psycopg.OperationalError:
        return  # the database checks already said so
    empty = (
        []
        if defaults is None
        else [
            n
            for n, v in zip(("branch", "seller", "file type", "series"), defaults, strict=True)
            if v is None
        ]
    )
    yield Check(
        "mapping",
        "header defaults",
        defaults is not None and not empty,
        "config_crm has no row"
        if defaults is None
        else (f"no default {', '.join(empty)}" if empty else "set"),
        "fill config_crm (sucursal_id, vendedor_id, tipo_expediente, serie)",
    )
    unmapped_sellers = [f"{n} (#{i})" for i, n, u in sellers if not u]
    yield Check(
        "mapping",
        "sellers mapped",
        not unmapped_sellers,
        ", ".join(unmapped_sellers) or f"{len(sellers)} mapped",
        "set vendedores.crm_usuario to the seller's CRM user name",
    )
    unknown_users = sorted({u for _, _, u in sellers if u and u not in users})
    yield Check(
        "mapping",
        "sellers point at CRM users",
        not unknown_users,
        f"no such CRM user: {', '.join(unknown_users)}" if unknown_users else "all exist",
        "correct vendedores.crm_usuario or create the user in the CRM",
    )
    unmapped_branches = [f"{n} (#{i})" for i, n, a in branches if not a]
    yield Check(
        "mapping",
        "branches mapped",
        not unmapped_branches,
        ", ".join(unmapped_branches) or f"{len(branches)} mapped",
        "set sucursales.crm_agencia_id to the branch's CRM agency id",
    )
    orphan_users = sorted(users - {u for _, _, u in sellers if u})
    yield Check(
        "mapping",
        "CRM users mapped",
        not orphan_users,
        f"no seller for: {', '.join(orphan_users)}" if orphan_users else "all mapped",
        "their files get the default seller; map them in vendedores.crm_usuario",
    )
    orphan_agencies = sorted(agencies - {a for _, _, a in branches if a})
    yield Check(
        "mapping",
        "CRM agencies mapped",
        not orphan_agencies,
        f"no branch for: {', '.join(orphan_agencies)}" if orphan_agencies else "all mapped",
        "their files get the default branch; map them in sucursales.crm_agencia_id",
    )


def run(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    for db in settings.databases:
        checks += _database(settings, db)
    checks += _kafka(settings)
    checks += _connect(settings)
    checks += _worker(settings)
    checks += _mapping(settings)
    return checks


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}
