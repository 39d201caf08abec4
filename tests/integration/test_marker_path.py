"""The marker path: a stack whose databases run PostgreSQL 15 (Debian's), which cannot leave
the sync's own writes out of what it sends (pgoutput has no `origin` option before 16). The sync's
writes come marked (`ofisync_origin`) and the worker drops them. A stack of its own (its own
tenant, home and ports), started by this module and stopped at its end."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator

import pytest

from streams.core.topics import Topics
from streams.settings import Settings
from streams.stack import install
from streams.stack.orchestrate import PlainProgress, Stack
from tests.conftest import REPO
from tests.integration.helpers import (
    crm_id_of,
    eventually,
    metric,
    new_erp_client,
    ofisync,
    one,
    query,
    settled,
    tag,
    worker_lag,
)

SYNC_WINDOW = 15.0


@pytest.fixture(scope="module")
def legacy() -> Iterator[tuple[Stack, dict[str, str]]]:
    env = {
        "OFISYNC_HOME": str(REPO / ".ofisync" / "legacy"),
        "OFISYNC_TENANT": "legacy",
        "OFISYNC_POSTGRES_BIN": str(install.debian_postgres(15)),
        "OFISYNC_ERP_DSN": "postgresql://postgres@127.0.0.1:25452/ofiviaje",
        "OFISYNC_CRM_DSN": "postgresql://postgres@127.0.0.1:25453/oficrm",
        "OFISYNC_KAFKA": "127.0.0.1:19192",
        "OFISYNC_KAFKA_CONTROLLER": "127.0.0.1:19193",
        "OFISYNC_CONNECT": "http://127.0.0.1:18183",
        "OFISYNC_WEB": "http://127.0.0.1:16166",
    }
    stack = Stack(Settings.from_env(dict(os.environ) | env))
    saved = dict(os.environ)
    os.environ.update(env)  # the worker process and the CLI read these
    try:
        stack.up(demo=False, progress=PlainProgress())
        yield stack, env
    finally:
        stack.down(PlainProgress())
        os.environ.clear()
        os.environ.update(saved)


def test_the_servers_are_older_than_16_and_doctor_says_how_echoes_are_kept_out(
    legacy: tuple[Stack, dict[str, str]],
) -> None:
    stack, env = legacy
    assert int(one(stack.settings.erp.dsn, "SHOW server_version_num")) < 160000
    checks = json.loads(ofisync("doctor", "--json", check=False, env=env).stdout)["checks"]
    echoes = [c for c in checks if c["name"] == "echoes"]
    assert len(echoes) == 2 and all(c["ok"] and "marked and dropped" in c["detail"] for c in echoes)


def test_the_sync_s_own_write_comes_back_marked_and_is_dropped(
    legacy: tuple[Stack, dict[str, str]],
) -> None:
    stack, _ = legacy
    erp, crm, settings = stack.settings.erp.dsn, stack.settings.crm.dsn, stack.settings
    client = new_erp_client(erp, f"Marca {tag()}")
    account = crm_id_of(erp, client, SYNC_WINDOW)
    topics = Topics(settings.tenant).all()
    quiet = settled(settings, topics)
    echoes = metric(settings, "ofisync_echoes_suppressed_total", source="crm")
    query(erp, "UPDATE clientes SET email = 'marca@erp.es' WHERE id = %s", (client,))
    eventually(
        lambda: one(crm, "SELECT email FROM accounts WHERE id = %s", (account,)) == "marca@erp.es",
        SYNC_WINDOW,
        "the edit crossed",
    )
    after = settled(settings, topics)
    produced = {
        tp.topic: after[tp] - quiet.get(tp, 0) for tp in after if after[tp] != quiet.get(tp, 0)
    }
    # The edit, and the CRM write captured with the sync's mark: dropped, nothing comes back.
    assert produced == {
        f"{settings.tenant}.erp.public.clientes": 1,
        f"{settings.tenant}.crm.public.accounts": 1,
    }, produced
    eventually(
        lambda: metric(settings, "ofisync_echoes_suppressed_total", source="crm") == echoes + 1,
        SYNC_WINDOW,
        "the echo counted",
    )
    eventually(lambda: worker_lag(settings) == 0, SYNC_WINDOW, "every message committed")
    assert one(crm, "SELECT ofisync_origin FROM accounts WHERE id = %s", (account,)) == "sync"


def test_both_ways_and_a_replay_over_data_in_sync_changes_nothing(
    legacy: tuple[Stack, dict[str, str]],
) -> None:
    stack, env = legacy
    erp, crm, settings = stack.settings.erp.dsn, stack.settings.crm.dsn, stack.settings
    since = dt.datetime.now(dt.UTC).isoformat()
    client = new_erp_client(erp, f"Viejo {tag()}", telefono="1")
    account = crm_id_of(erp, client, SYNC_WINDOW)
    query(crm, "UPDATE accounts SET city = 'Jaca' WHERE id = %s", (account,))
    query(erp, "UPDATE clientes SET telefono = '2' WHERE id = %s", (client,))
    eventually(
        lambda: (
            query(erp, "SELECT poblacion, telefono FROM clientes WHERE id = %s", (client,))
            == [("Jaca", "2")]
            and one(crm, "SELECT phone FROM accounts WHERE id = %s", (account,)) == "2"
        ),
        SYNC_WINDOW,
        "both edits crossed",
    )
    eventually(lambda: worker_lag(settings) == 0, SYNC_WINDOW, "caught up")
    before = {
        side: query(dsn, f"SELECT * FROM {table} ORDER BY id")
        for side, dsn, table in (("erp", erp, "clientes"), ("crm", crm, "accounts"))
    }
    done = ofisync("replay", "--since", since, env=env)
    assert "commands sent" in done.stdout
    eventually(lambda: worker_lag(settings) == 0, 60, "replay applied")
    assert json.loads(ofisync("verify", "--json", env=env).stdout)["clean"]
    after = {
        side: query(dsn, f"SELECT * FROM {table} ORDER BY id")
        for side, dsn, table in (("erp", erp, "clientes"), ("crm", crm, "accounts"))
    }
    assert after == before
