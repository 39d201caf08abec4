"""Documents P → G → O on the real stack: byte-identical uploads with flat memory, re-marking
replaces, waiting for the file, the CRM down or refusing, and nothing uploaded twice."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from streams.apply.documents import CRM_UNREACHABLE, WAITING_FOR_FILE
from streams.core.topics import Topics
from streams.stack.orchestrate import Stack
from tests.integration.helpers import (
    eventually,
    ofisync,
    one,
    query,
    settled,
    tag,
    worker_lag,
)

SYNC_WINDOW = 15.0
UPLOAD_WINDOW = 60.0


def linked_file(erp: str, crm: str) -> tuple[int, int]:
    """An OfiViaje file already linked to its CRM file: (expediente id, CRM file id)."""
    client = one(
        erp,
        "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true) RETURNING id",
        (f"Documentos {tag()}",),
    )
    file_id = one(
        erp,
        "INSERT INTO expedientes (numero, cliente_id, descripcion) VALUES (%s, %s, 'Congreso')"
        " RETURNING id",
        (f"D/{tag()}", client),
    )
    crm_file = eventually(
        lambda: one(crm, "SELECT id FROM files WHERE erp_id = %s", (file_id,)),
        SYNC_WINDOW,
        f"file {file_id} linked",
    )
    return int(file_id), int(crm_file)


def new_document(erp: str, file_id: int, content: bytes, state: str = "G") -> int:
    return int(
        one(
            erp,
            "INSERT INTO documentos (expediente_id, tipo, nombre_fichero, mime, contenido,"
            " estado_sync) VALUES (%s, 'bono', %s, 'application/pdf', %s, %s) RETURNING id",
            (file_id, f"bono-{tag()}.pdf", content, state),
        )
    )


def uploaded(erp: str, document: int, window: float = UPLOAD_WINDOW) -> int:
    """Waits for O and returns crm_documento_id."""
    row = eventually(
        lambda: (
            one(
                erp,
                "SELECT estado_sync, crm_documento_id, error_sync FROM documentos WHERE id = %s",
                (document,),
            )
            if one(erp, "SELECT estado_sync FROM documentos WHERE id = %s", (document,)) == "O"
            else None
        ),
        window,
        f"document {document} uploaded (O)",
    )
    assert row[2] is None, f"an uploaded document keeps no error: {row[2]!r}"
    return int(row[1])


def crm_copy(crm: str, crm_document: int) -> tuple[int, str]:
    size, digest = one(
        crm,
        "SELECT octet_length(content), encode(sha256(content), 'hex') FROM documents WHERE id = %s",
        (crm_document,),
    )
    return int(size), str(digest)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_small_and_20_mb_documents_arrive_byte_identical_with_flat_memory(
    stack: Stack, erp: str, crm: str
) -> None:
    file_id, crm_file = linked_file(erp, crm)
    small = b"%PDF-1.4 bono de hotel\n" + os.urandom(3000)
    large = os.urandom(20 * 1024 * 1024)
    pid = stack.worker.pid()
    assert pid is not None
    peak_before = peak_rss_kib(pid)
    for content in (small, large):
        document = new_document(erp, file_id, content)
        crm_document = uploaded(erp, document)
        assert crm_copy(crm, crm_document) == (len(content), hashlib.sha256(content).hexdigest())
        assert one(
            crm,
            "SELECT file_id, erp_document_id, filename, mime_type, doc_type FROM documents"
            " WHERE id = %s",
            (crm_document,),
        )[:2] == (crm_file, document)
    grown_mib = (peak_rss_kib(pid) - peak_before) / 1024
    assert grown_mib < 16, f"the worker's peak memory grew {grown_mib:.0f} MiB for 20 MiB"


def test_marking_again_replaces_the_crm_copy_and_never_adds_one(erp: str, crm: str) -> None:
    file_id, _ = linked_file(erp, crm)
    document = new_document(erp, file_id, b"primera version")
    first = uploaded(erp, document)
    one(
        erp,
        "UPDATE documentos SET contenido = %s, estado_sync = 'G' WHERE id = %s",
        (b"segunda version, corregida", document),
    )
    second = uploaded(erp, document)
    assert second == first
    assert crm_copy(crm, first)[1] == hashlib.sha256(b"segunda version, corregida").hexdigest()
    assert one(crm, "SELECT count(*) FROM documents WHERE erp_document_id = %s", (document,)) == 1


def test_an_unmarked_document_stays_home(stack: Stack, erp: str, crm: str) -> None:
    file_id, _ = linked_file(erp, crm)
    document = new_document(erp, file_id, b"borrador", state="P")
    settled(stack.settings, Topics(stack.settings.tenant).all())
    eventually(lambda: worker_lag(stack.settings) == 0, SYNC_WINDOW, "worker caught up")
    assert one(crm, "SELECT count(*) FROM documents WHERE erp_document_id = %s", (document,)) == 0
    assert one(erp, "SELECT estado_sync FROM documentos WHERE id = %s", (document,)) == "P"


@pytest.fixture
def crm_refuses_name(crm: str) -> Iterator[str]:
    """A CRM that refuses accounts with a given name (as a full or broken CRM would)."""
    name = f"BLOQUEADA {tag()}"
    constraint = f"refuse_{tag()}"
    with psycopg.connect(crm, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE accounts ADD CONSTRAINT {} CHECK (name <> {}) NOT VALID").format(
                sql.Identifier(constraint), sql.Literal(name)
            )
        )
    yield name
    one(crm, f"ALTER TABLE accounts DROP CONSTRAINT IF EXISTS {constraint}")


def test_a_client_its_file_and_a_marked_document_written_together_go_up_together(
    erp: str, crm: str
) -> None:
    # One transaction: the sink most likely gets all three in one batch, where the file is
    # still a pending insert of its working set when the document goes up.
    with psycopg.connect(erp) as conn:
        client = conn.execute(
            "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true) RETURNING id",
            (f"Juntos {tag()}",),
        ).fetchone()[0]  # type: ignore[index]
        file_id = conn.execute(
            "INSERT INTO expedientes (numero, cliente_id) VALUES (%s, %s) RETURNING id",
            (f"J/{tag()}", client),
        ).fetchone()[0]  # type: ignore[index]
        document = conn.execute(
            "INSERT INTO documentos (expediente_id, tipo, nombre_fichero, mime, contenido,"
            " estado_sync) VALUES (%s, 'bono', 'bono.pdf', 'application/pdf', %s, 'G')"
            " RETURNING id",
            (file_id, b"bono de hotel"),
        ).fetchone()[0]  # type: ignore[index]
    crm_document = uploaded(erp, document)
    crm_file = one(crm, "SELECT id FROM files WHERE erp_id = %s", (file_id,))
    assert one(crm, "SELECT file_id FROM documents WHERE id = %s", (crm_document,)) == crm_file
    assert crm_copy(crm, crm_document)[1] == hashlib.sha256(b"bono de hotel").hexdigest()


def test_a_document_of_a_file_not_synced_yet_waits_then_goes(
    erp: str, crm: str, crm_refuses_name: str
) -> None:
    client = one(
        erp,
        "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true) RETURNING id",
        (crm_refuses_name,),
    )
    file_id = one(
        erp,
        "INSERT INTO expedientes (numero, cliente_id) VALUES (%s, %s) RETURNING id",
        (f"W/{tag()}", client),
    )
    document = new_document(erp, file_id, b"contrato de viaje combinado")
    eventually(
        lambda: (
            one(erp, "SELECT error_sync FROM documentos WHERE id = %s", (document,))
            == WAITING_FOR_FILE
        ),
        SYNC_WINDOW,
        "the document says it waits for its file",
    )
    assert one(erp, "SELECT estado_sync FROM documentos WHERE id = %s", (document,)) == "G"
    # Someone fixes the client; it goes up, then its file, then the document.
    one(erp, "UPDATE clientes SET nombre = %s WHERE id = %s", (f"Arreglada {tag()}", client))
    crm_document = uploaded(erp, document)
    crm_file = one(crm, "SELECT id FROM files WHERE erp_id = %s", (file_id,))
    assert one(crm, "SELECT file_id FROM documents WHERE id = %s", (crm_document,)) == crm_file


def test_a_refused_upload_stays_g_with_the_reason_and_goes_once_accepted(
    erp: str, crm: str
) -> None:
    file_id, _ = linked_file(erp, crm)
    trigger = f"refuse_{tag()}"
    one(
        crm,
        f"CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'cuota de documentos superada'; END $$",
    )
    one(crm, f"CREATE TRIGGER {trigger} BEFORE INSERT ON documents FOR EACH ROW"
        f" EXECUTE FUNCTION {trigger}()")  # fmt: skip
    try:
        document = new_document(erp, file_id, b"factura proforma")
        eventually(
            lambda: (
                "cuota de documentos superada"
                in (one(erp, "SELECT error_sync FROM documentos WHERE id = %s", (document,)) or "")
            ),
            SYNC_WINDOW,
            "the refusal is shown in words",
        )
        assert one(erp, "SELECT estado_sync FROM documentos WHERE id = %s", (document,)) == "G"
    finally:
        one(crm, f"DROP TRIGGER IF EXISTS {trigger} ON documents")
        one(crm, f"DROP FUNCTION IF EXISTS {trigger}()")
    crm_document = uploaded(erp, document)  # retried with back-off (30 s at most)
    assert crm_copy(crm, crm_document)[1] == hashlib.sha256(b"factura proforma").hexdigest()


def test_with_the_crm_down_a_document_waits_saying_why_and_ends_o_with_one_copy(
    stack: Stack, erp: str, crm: str
) -> None:
    file_id, _ = linked_file(erp, crm)
    content = os.urandom(5 * 1024 * 1024)
    stack.crm.stop()
    try:
        document = new_document(erp, file_id, content)
        eventually(
            lambda: (
                one(erp, "SELECT error_sync FROM documentos WHERE id = %s", (document,))
                == CRM_UNREACHABLE
            ),
            SYNC_WINDOW,
            "the document says the CRM does not answer",
        )
    finally:
        ofisync("up")  # starts the CRM database again (and whatever depends on it)
    crm_document = uploaded(erp, document, window=120)
    assert crm_copy(crm, crm_document)[1] == hashlib.sha256(content).hexdigest()
    assert one(crm, "SELECT count(*) FROM documents WHERE erp_document_id = %s", (document,)) == 1
    assert query(erp, "SELECT error_sync FROM documentos WHERE id = %s", (document,)) == [(None,)]
