"""Topic names of one tenant: what Debezium captures from each side, the command topics
(replays, dead letters retried), the dead letters. Every name carries the tenant, so several
agencies can share one Kafka cluster."""

from __future__ import annotations

from dataclasses import dataclass

from streams.core.contract import ENTITIES, PNR_TABLE
from streams.core.mapping import CRM_CONFIG_TABLES, ERP_CONFIG_TABLES
from streams.core.model import Side

# Every table each connector publishes (streams/db/sync_<side>.sql): their topics are created
# up front with the same partition count, rather than on a table's first change.
CAPTURED_TABLES = {
    Side.ERP: (
        "clientes",
        "expedientes",
        "billetes",
        "sucursales",
        "vendedores",
        "config_crm",
        "documentos",
    ),
    Side.CRM: ("accounts", "files", "segments", "agencies", "users", "documents"),
}


@dataclass(frozen=True)
class Topics:
    tenant: str

    def capture(self, side: Side, table: str, schema: str = "public") -> str:
        return f"{self.tenant}.{side.value}.{schema}.{table}"

    def commands(self, target: Side) -> str:
        return f"{self.tenant}.to-{target.value}"

    @property
    def dead_letters(self) -> str:
        return f"{self.tenant}.dlq"

    def captured_from(self, side: Side) -> list[str]:
        """What one direction's agent reads: the synced tables captured on `side` (and on
        OfiViaje the tickets, whose PNR captures zero placeholders)."""
        names = {self.capture(side, e.table(side)) for e in ENTITIES.values() if side in e.sources}
        if side is Side.ERP:
            names.add(self.capture(Side.ERP, PNR_TABLE))
        return sorted(names)

    def captured_entities(self) -> list[str]:
        """Every synced table's capture topic, both sides."""
        return sorted({*self.captured_from(Side.ERP), *self.captured_from(Side.CRM)})

    def configuration(self) -> list[str]:
        """What the mapping feed folds: the mapping and header-default tables of both sides."""
        return [
            *(self.capture(Side.ERP, t) for t in ERP_CONFIG_TABLES),
            *(self.capture(Side.CRM, t) for t in CRM_CONFIG_TABLES),
        ]

    def all(self) -> list[str]:
        return [
            *(self.capture(side, t) for side, tables in CAPTURED_TABLES.items() for t in tables),
            self.commands(Side.ERP),
            self.commands(Side.CRM),
            self.dead_letters,
        ]
