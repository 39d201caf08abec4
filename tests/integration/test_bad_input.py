"""Bad input on the real stack: poisoned messages on every topic the worker reads become dead
letters with their reason while the line goes on; hostile values cross exactly or are refused
whole; a column added to a synced table does not stop the line."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from kafka import KafkaProducer
from psycopg import sql

from streams.core import codec
from streams.core.contract import CLIENT
from streams.core.model import Command, CommandOp, FieldValue, Side
from streams.core.topics import Topics
from streams.ops.dlq import read_all
from streams.stack.orchestrate import Stack
from tests.integration.helpers import crm_id_of, eventually, new_erp_client, one, query, tag

SYNC_WINDOW = 15.0


def _poisons(topic: str, command_topic: bool) -> list[tuple[str, bytes]]:
    """(what, bytes): malformed, truncated and wrongly typed messages for one topic."""
    if command_topic:
        good = codec.encode(
            Command(Side.ERP, "client", CommandOp.UPSERT, "1", None, 1, 1, True,
                    (FieldValue("name", None, "x", True),))
        )  # fmt: skip
        return [
            ("malformed", b"not a command at all"),
            ("truncated", good[: len(good) // 2]),
            ("wrongly typed", bytes((0, 99)) + good[2:]),  # a schema version nobody wrote
        ]
    envelope = {
        "op": "u",
        "before": {"id": 1},
        "after": {"id": 1, "nombre": "x"},
        "source": {"schema": "public", "table": topic.rsplit(".", 1)[1], "lsn": 1, "ts_us": 1},
    }
    text = json.dumps(envelope).encode()
    return [
        ("malformed", b"{this is not json"),
        ("truncated", text[: len(text) // 2]),
        ("wrongly typed", json.dumps(envelope | {"after": ["not", "a", "row"]}).encode()),
    ]


def test_poisoned_messages_on_every_topic_become_dead_letters_and_the_line_goes_on(
    stack: Stack, erp: str, crm: str
) -> None:
    topics = Topics(stack.settings.tenant)
    read = [*topics.captured_entities(), topics.commands(Side.ERP), topics.commands(Side.CRM)]
    run = tag()
    producer = KafkaProducer(bootstrap_servers=str(stack.settings.kafka), acks="all")
    sent: dict[bytes, tuple[str, str]] = {}
    for topic in read:
        for what, value in _poisons(topic, topic in (topics.commands(Side.ERP),
                                                     topics.commands(Side.CRM))):  # fmt: skip
            key = json.dumps({"id": f"{run}-{what}-{topic}"}).encode()
            producer.send(topic, key=key, value=value).get(30)
            sent[key] = (topic, what)
    producer.close()

    # dlq list shows reason and origin; the key tells which poison each one is.
    letters = eventually(
        lambda: _ours(stack, run, len(sent)), 60, "every poison is a dead letter", every=2
    )
    assert {(d["from"].rsplit("[", 1)[0]) for d in letters} == set(read)
    assert all(d["reason"] and d["reason"] != "?" for d in letters)
    # The line goes on: a real change still crosses.
    client = one(
        erp, "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true) RETURNING id",
        (f"Después del veneno {run}",),
    )  # fmt: skip
    eventually(
        lambda: one(erp, "SELECT crm_id FROM clientes WHERE id = %s", (client,)),
        SYNC_WINDOW,
        "a change after the poison still syncs",
    )


def _ours(stack: Stack, run: str, expected: int) -> list[dict[str, Any]] | None:
    """The dead letters whose key carries `run`, once there are `expected` of them."""
    ours = [
        d.summary() for d in read_all(stack.settings) if d.key is not None and run.encode() in d.key
    ]
    return ours if len(ours) >= expected else None


HOSTILE = {
    "sql": "Robert'); DROP TABLE clientes;-- \" OR 1=1 /* */ $$ \\x00",
    "control": "".join(chr(c) for c in range(1, 32)) + "\x7f",
    "rtl": "שלום עולם — مرحبا بالعالم ‏‮reversed‬",
    "planes": "A\u00e9\u20ac\U0001f600\U00020000\U00030000\U000e0041\U000f0000\U0010fffd",
    "long": ("Nota larga. " * 900)[:10_000],
}


def test_hostile_values_cross_exactly_both_ways(erp: str, crm: str) -> None:
    run = tag()
    name = f"{HOSTILE['sql'][:60]} {run}"
    client = one(
        erp,
        "INSERT INTO clientes (nombre, sincronizar_crm, contacto, direccion, observaciones)"
        " VALUES (%s, true, %s, %s, %s) RETURNING id",
        (name, HOSTILE["control"], HOSTILE["rtl"], HOSTILE["long"] + HOSTILE["planes"]),
    )
    account = eventually(
        lambda: one(erp, "SELECT crm_id FROM clientes WHERE id = %s", (client,)),
        SYNC_WINDOW,
        "client with hostile values linked",
    )
    assert one(crm, "SELECT name, contact_name, street, notes FROM accounts WHERE id = %s",
               (account,)) == (name, HOSTILE["control"], HOSTILE["rtl"],
                               HOSTILE["long"] + HOSTILE["planes"])  # fmt: skip
    # And back: the CRM edits every field with hostile values.
    one(
        crm,
        "UPDATE accounts SET city = %s, notes = %s, contact_title = %s WHERE id = %s",
        (HOSTILE["planes"], HOSTILE["sql"], HOSTILE["rtl"][:80], account),
    )
    eventually(
        lambda: (
            one(
                erp,
                "SELECT poblacion, observaciones, cargo_contacto FROM clientes WHERE id = %s",
                (client,),
            )
            == (HOSTILE["planes"], HOSTILE["sql"], HOSTILE["rtl"][:80])
        ),
        SYNC_WINDOW,
        "hostile values came back exactly",
    )


def test_a_value_too_long_for_the_other_side_is_refused_whole(
    stack: Stack, erp: str, crm: str
) -> None:
    run = tag()
    too_long = f"{run} " + "x" * 160  # the CRM takes 200 characters, OfiViaje 150
    account = one(
        crm,
        "INSERT INTO accounts (name, city, notes) VALUES (%s, 'Huesca', %s) RETURNING id",
        (too_long, f"nota {run}"),
    )
    key = f"client:crm:{account}".encode()
    [letter] = eventually(
        lambda: [d for d in read_all(stack.settings) if d.key == key],
        60,
        "the refused account is a dead letter",
        every=2,
    )
    # A new record cannot be created without it: the whole change waits, the column named.
    assert letter.reason == (
        "clientes.nombre holds 150 characters, the value has 171: shorten it at the source"
    )
    assert query(erp, "SELECT id FROM clientes WHERE crm_id = %s", (account,)) == []
    assert query(erp, "SELECT id FROM clientes WHERE observaciones = %s", (f"nota {run}",)) == []


def test_a_column_added_to_a_synced_table_does_not_stop_the_line(erp: str, crm: str) -> None:
    column = f"extra_{tag()}"
    with psycopg.connect(erp, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE clientes ADD COLUMN {} text DEFAULT 'nuevo'").format(
                sql.Identifier(column)
            )
        )
    try:
        client = new_erp_client(erp, f"Deriva {column}")
        account = crm_id_of(erp, client, SYNC_WINDOW)
        one(erp, "UPDATE clientes SET email = 'deriva@example.es' WHERE id = %s", (client,))
        eventually(
            lambda: (
                one(crm, "SELECT email FROM accounts WHERE id = %s", (account,))
                == "deriva@example.es"
            ),
            SYNC_WINDOW,
            "and its updates too",
        )
        assert {f.erp for f in CLIENT.fields}.isdisjoint({column})
    finally:
        with psycopg.connect(erp, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER TABLE clientes DROP COLUMN {}").format(sql.Identifier(column))
            )
