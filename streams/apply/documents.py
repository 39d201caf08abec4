"""Documents (apply stage): uploading an OfiViaje document marked G to its CRM file.

The content never travels through Kafka (capture leaves it out): the uploader reads it from
OfiViaje when the command applies, in 1 MiB slices of one consistent snapshot, and streams it
into the CRM with a binary COPY, so memory stays flat whatever the size. The bytes that arrived
are checked against OfiViaje's own SHA-256 before the CRM transaction commits. A document
already uploaded is replaced in place (one copy, same id); the position the CRM copy keeps stops a
redelivered change from uploading twice.

What the user sees is written back to `documentos` (as the sync, so it does not echo): `O` and
`crm_documento_id` once uploaded; otherwise `error_sync`, in Spanish words, while it waits for
its file, while the CRM is unreachable, or while the CRM refuses it (then it is retried with
back-off, parked).
"""

from __future__ import annotations

import struct
from typing import Any

import psycopg

from streams.apply.parking import Waiting
from streams.apply.records import Duplicate
from streams.apply.results import Applied, BatchResult
from streams.apply.translate import Translator
from streams.core.contract import DOCUMENT
from streams.core.model import Command, to_db

CHUNK = 1 << 20
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = struct.pack("!h", -1)

WAITING_FOR_FILE = (
    "Esperando a que el expediente se sincronice con el CRM; se subirá en cuanto lo esté."
)
CRM_UNREACHABLE = "El CRM no responde; se reintentará automáticamente."


def refused(reason: str) -> str:
    return f"El CRM ha rechazado el documento ({reason}); se reintentará automáticamente."


class ChecksumMismatch(RuntimeError):
    pass


async def upload(
    crm: psycopg.AsyncConnection[Any],
    erp: psycopg.AsyncConnection[Any],
    translator: Translator,
    cmd: Command,
    result: BatchResult,
) -> Applied | Waiting | Duplicate | None:
    document = int(cmd.source_key)
    existing = await _existing(crm, cmd)
    if existing is not None and (cmd.replay or (existing[1] or -1) >= cmd.lsn):
        # Uploaded already: a redelivery uploads nothing twice, and a replay only what a
        # restored CRM lost.
        result.duplicates += 1
        return Duplicate({"id": existing[0]})
    values = await translator.command_values(DOCUMENT, cmd, only_changed=False)
    if isinstance(values, Waiting):
        result.document_notes.append((document, WAITING_FOR_FILE))
        return values
    columns = {v.column: to_db(v.kind, v.after) for v in values}
    try:
        async with crm.transaction():  # a savepoint: a refusal undoes this upload only
            stored = await _store(crm, erp, cmd, columns, existing and existing[0])
    except psycopg.OperationalError:
        raise  # unreachable, not refused: the whole batch waits and retries
    except psycopg.Error as exc:  # a constraint, a trigger, a quota: the CRM said no
        reason = _primary(exc)
        result.document_notes.append((document, refused(reason)))
        return Waiting(None, None, f"the CRM refused document {document}: {reason}")
    except ChecksumMismatch as exc:
        result.document_notes.append((document, refused("la copia no coincide con el original")))
        return Waiting(None, None, str(exc))
    return None if stored is None else Applied(stored)


async def _store(
    crm: psycopg.AsyncConnection[Any],
    erp: psycopg.AsyncConnection[Any],
    cmd: Command,
    columns: dict[str, Any],
    existing: int | None,
) -> int | None:
    document = int(cmd.source_key)
    await crm.execute(
        "CREATE TEMP TABLE IF NOT EXISTS ofisync_upload (content bytea) ON COMMIT DELETE ROWS"
    )
    await crm.execute("TRUNCATE ofisync_upload")
    async with erp.transaction():
        await erp.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur = await erp.execute(
            "SELECT octet_length(contenido), encode(sha256(contenido), 'hex')"
            " FROM documentos WHERE id = %s",
            (document,),
        )
        found = await cur.fetchone()
        if found is None or found[0] is None:
            return None  # deleted since it was marked: nothing to upload
        size, digest = int(found[0]), str(found[1])
        reader = erp.cursor(binary=True)
        async with crm.cursor().copy(
            "COPY ofisync_upload (content) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            await copy.write(COPY_SIGNATURE + struct.pack("!hi", 1, size))
            for offset in range(0, size, CHUNK):
                await reader.execute(
                    "SELECT substring(contenido FROM %s FOR %s) FROM documentos WHERE id = %s",
                    (offset + 1, CHUNK, document),
                )
                piece = await reader.fetchone()
                assert piece is not None
                await copy.write(piece[0])
            await copy.write(COPY_TRAILER)
    assignments = ", ".join(f"{c} = %s" for c in columns)
    if existing is not None:
        cur = await crm.execute(
            f"UPDATE documents SET {assignments}, content = u.content, uploaded_at = now(),"
            " erp_document_id = %s, ofisync_deleted_at = NULL,"
            " ofisync_applied_lsn = greatest(ofisync_applied_lsn, %s) FROM ofisync_upload u"
            " WHERE documents.id = %s RETURNING documents.id,"
            " encode(sha256(documents.content), 'hex')",
            [*columns.values(), document, cmd.lsn, existing],
        )
    else:
        names = ", ".join(columns)
        marks = ", ".join(["%s"] * len(columns))
        cur = await crm.execute(
            f"INSERT INTO documents ({names}, erp_document_id, ofisync_applied_lsn, content)"
            f" SELECT {marks}, %s, %s, u.content FROM ofisync_upload u"
            " RETURNING id, encode(sha256(content), 'hex')",
            [*columns.values(), document, cmd.lsn],
        )
    stored = await cur.fetchone()
    assert stored is not None
    if stored[1] != digest:
        raise ChecksumMismatch(
            f"document {document}: the CRM holds SHA-256 {stored[1]}, OfiViaje {digest}"
        )
    return int(stored[0])


async def _existing(
    crm: psycopg.AsyncConnection[Any], cmd: Command
) -> tuple[int, int | None] | None:
    """The CRM copy of this document, if it was uploaded before (by link or back-reference),
    with the position of the last change it took."""
    cur = await crm.execute(
        "SELECT id, ofisync_applied_lsn FROM documents WHERE id = %s OR erp_document_id = %s"
        " ORDER BY id = %s DESC LIMIT 1 FOR UPDATE",
        (
            int(cmd.link_key) if cmd.link_key else None,
            int(cmd.source_key),
            int(cmd.link_key) if cmd.link_key else None,
        ),
    )
    row = await cur.fetchone()
    return None if row is None else (int(row[0]), row[1])


def _primary(exc: psycopg.Error) -> str:
    diag = exc.diag.message_primary if exc.diag else None
    return diag or str(exc).strip().splitlines()[0]


async def write_notes(erp: psycopg.AsyncConnection[Any], notes: list[tuple[int, str]]) -> None:
    """Sets `error_sync` of documents still marked G (inside the caller's sync transaction)."""
    for document, message in notes:
        await erp.execute(
            "UPDATE documentos SET error_sync = %s WHERE id = %s AND estado_sync = 'G'"
            " AND error_sync IS DISTINCT FROM %s",
            (message, document, message),
        )


async def mark_uploaded(erp: psycopg.AsyncConnection[Any], uploaded: list[tuple[int, int]]) -> None:
    for document, crm_document in uploaded:
        await erp.execute(
            "UPDATE documentos SET estado_sync = 'O', crm_documento_id = %s, error_sync = NULL"
            " WHERE id = %s AND estado_sync = 'G'",
            (crm_document, document),
        )


async def backlog(erp: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    """Documents marked G, and how many of them carry an error."""
    cur = await erp.execute(
        "SELECT count(*), count(error_sync) FROM documentos WHERE estado_sync = 'G'"
    )
    row = await cur.fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)
