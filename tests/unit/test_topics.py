"""Topic names: each direction reads only what its side captures, the tenant in every name."""

from __future__ import annotations

from streams.core.model import Side
from streams.core.topics import Topics


def test_each_direction_reads_the_synced_tables_its_side_captures() -> None:
    topics = Topics("agencia")
    assert topics.captured_from(Side.ERP) == [
        "agencia.erp.public.billetes",  # PNR captures zero placeholders
        "agencia.erp.public.clientes",
        "agencia.erp.public.documentos",
        "agencia.erp.public.expedientes",
    ]
    assert topics.captured_from(Side.CRM) == [
        "agencia.crm.public.accounts",
        "agencia.crm.public.files",
        "agencia.crm.public.segments",
    ]
    assert set(topics.captured_entities()) == {
        *topics.captured_from(Side.ERP),
        *topics.captured_from(Side.CRM),
    }


def test_the_configuration_is_not_a_direction_and_every_topic_is_created() -> None:
    topics = Topics("agencia")
    assert not set(topics.configuration()) & set(topics.captured_entities())
    assert set(topics.all()) >= {*topics.captured_entities(), *topics.configuration()}
    assert {topics.commands(Side.ERP), topics.commands(Side.CRM), topics.dead_letters} <= set(
        topics.all()
    )
    assert all(name.startswith("agencia.") for name in topics.all())
