"""Prepares the agency's two PostgreSQL servers for the sync, exactly as `ofisync up` prepares its
local ones (streams.stack.postgres.Cluster.ensure_database): the sync's schema, triggers and
publication (streams/db/*.sql, applied only when they changed, so a second run is a no-op), and
the two roles `<tenant>_sink` (the worker) and `<tenant>_capture` (Debezium, REPLICATION), whose
passwords are set from the secret files, as SCRAM verifiers.

Run it before the first start, after an upgrade, and after changing a role's password file:

    docker compose run --rm --entrypoint python ops \\
        deploy/production/prepare_databases.py --admin postgres [--side erp|crm]

It logs in as `--admin` (a superuser of that server: it creates roles, triggers and a
publication and reloads the configuration) at the host, port and database of OFISYNC_ERP_DSN /
OFISYNC_CRM_DSN, and asks for that password, which it keeps nowhere.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

import psycopg
from psycopg.conninfo import make_conninfo

from streams.secrets import Role, role_name
from streams.settings import Settings, SettingsError
from streams.stack.postgres import Cluster
from streams.stack.procs import StackError

SIDES = ("erp", "crm")


def missing_role_secrets(sides: Sequence[str], env: dict[str, str]) -> list[str]:
    """The password variables with no value: without them `ensure_database` would generate a
    password inside this one-off container, which the worker and Connect would never know."""
    missing = []
    for side in sides:
        for role in Role:
            variable = f"OFISYNC_{side.upper()}_{role.value.upper()}_PASSWORD"
            if not env.get(variable) and not env.get(f"{variable}_FILE"):
                missing.append(f"{variable}_FILE")
    return missing


def as_admin(settings: Settings, side: str, user: str, password: str | None) -> Settings:
    """The settings with `side`'s DSN logging in as the admin (other parameters unchanged)."""
    db = settings.erp if side == "erp" else settings.crm
    admin = replace(db, dsn=make_conninfo(db.dsn, user=user, password=password))
    return replace(settings, erp=admin) if side == "erp" else replace(settings, crm=admin)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply the sync's schema and roles.")
    parser.add_argument("--admin", required=True, help="a superuser of the database servers")
    parser.add_argument("--side", choices=SIDES, help="only this database (default: both)")
    parser.add_argument(
        "--no-password",
        action="store_true",
        help="do not ask: the admin's password comes from PGPASSFILE (or it needs none)",
    )
    args = parser.parse_args(argv)
    sides = [args.side] if args.side else list(SIDES)
    try:
        settings = Settings.from_env()
        missing = missing_role_secrets(sides, dict(os.environ))
        if missing:
            raise SettingsError(f"set {', '.join(missing)} (the ops service of compose.yaml does)")
        for side in sides:
            db = settings.erp if side == "erp" else settings.crm
            secret = (
                None
                if args.no_password
                else getpass.getpass(f"password of {args.admin} on {db.endpoint}/{db.dbname}: ")
            )
            admin = as_admin(settings, side, args.admin, secret or None)
            remade = Cluster(admin, admin.erp if side == "erp" else admin.crm).ensure_database()
            roles = ", ".join(role_name(settings, r) for r in Role)
            print(f"✓ {db.title} ({db.endpoint}/{db.dbname}): sync schema, publication, {roles}")
            if remade:
                print(f"  write triggers made for the new columns of {', '.join(remade)}")
    except (SettingsError, StackError) as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"prepare: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
