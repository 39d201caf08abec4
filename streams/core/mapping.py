"""Mapping (rules stage): sellers, branches, header defaults and vocabularies between the two
applications. Pure: no I/O.

`Mapping` is folded from the captured configuration tables (OfiViaje's `sucursales`, `vendedores`,
`config_crm`; the CRM's `users`, `agencies`) by streams/worker/mapping_feed.py, so a change to them
takes effect within seconds, without a restart. The translations never fail: a value with no mapping
falls back to the header default and says so (`Mapped.fallback`), so a file is never dropped for
want of a mapping.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingType
from dataclasses import dataclass, field
from typing import TypeVar

from streams.core.model import Canonical, ChangeEvent, Op, Side, Via

# OfiViaje's file states and the CRM's, one to one. A value outside both crosses unchanged.
FILE_STATUS = {
    "abierto": "open",
    "confirmado": "confirmed",
    "facturado": "invoiced",
    "cerrado": "closed",
    "anulado": "cancelled",
}
TICKET_KIND = {"avion": "flight", "tren": "train"}
VOCABULARIES: MappingType[Via, MappingType[str, str]] = {
    Via.FILE_STATUS: FILE_STATUS,
    Via.TICKET_KIND: TICKET_KIND,
}

K = TypeVar("K")

ERP_CONFIG_TABLES = ("sucursales", "vendedores", "config_crm")
CRM_CONFIG_TABLES = ("users", "agencies")


def translate_word(via: Via, value: Canonical, to: Side) -> Canonical:
    """A vocabulary word in the other application's vocabulary (ERP words are the keys)."""
    words = VOCABULARIES[via]
    if not isinstance(value, str):
        return value
    if to is Side.CRM:
        return words.get(value, value)
    return next((erp for erp, crm in words.items() if crm == value), value)


@dataclass(frozen=True)
class Mapped:
    """A translated value; `fallback` says why the header default was used instead."""

    value: Canonical
    fallback: str | None = None


@dataclass(frozen=True)
class HeaderDefaults:
    """config_crm: what a file coming from the CRM gets when nothing else says."""

    sucursal_id: int | None = None
    vendedor_id: int | None = None
    tipo_expediente: str | None = None
    serie: str | None = None
    zero_placeholders_on_pnr: bool = False


@dataclass
class Mapping:
    """The live mapping state. `version` counts the changes folded in."""

    sellers: dict[int, str | None] = field(default_factory=dict)  # vendedor id → CRM username
    branches: dict[int, str | None] = field(default_factory=dict)  # sucursal id → agency id
    defaults: HeaderDefaults = field(default_factory=HeaderDefaults)
    crm_users: dict[str, str | None] = field(default_factory=dict)  # username → agency id
    crm_agencies: set[str] = field(default_factory=set)
    version: int = 0

    def fold(self, event: ChangeEvent) -> bool:
        """Applies one captured change of a configuration table; False when it is not one."""
        row = event.row
        deleted = event.op is Op.DELETE
        table = (event.source, event.table)
        if table == (Side.ERP, "vendedores"):
            _put(
                self.sellers,
                _int(row.get("id")),
                None if deleted else _str(row.get("crm_usuario")),
                deleted,
            )
        elif table == (Side.ERP, "sucursales"):
            _put(
                self.branches,
                _int(row.get("id")),
                None if deleted else _str(row.get("crm_agencia_id")),
                deleted,
            )
        elif table == (Side.ERP, "config_crm"):
            self.defaults = (
                HeaderDefaults()
                if deleted
                else HeaderDefaults(
                    sucursal_id=_int(row.get("sucursal_id")),
                    vendedor_id=_int(row.get("vendedor_id")),
                    tipo_expediente=_str(row.get("tipo_expediente")),
                    serie=_str(row.get("serie")),
                    zero_placeholders_on_pnr=bool(row.get("ofisync_zero_placeholders")),
                )
            )
        elif table == (Side.CRM, "users"):
            username = _str(row.get("username"))
            if event.op is Op.UPDATE and event.before is not None:
                self.crm_users.pop(_str(event.before.get("username")) or "", None)
            if username is not None:
                _put(self.crm_users, username, _str(row.get("agency_id")), deleted)
        elif table == (Side.CRM, "agencies"):
            agency = _str(row.get("id"))
            if agency is not None:
                (self.crm_agencies.discard if deleted else self.crm_agencies.add)(agency)
        else:
            return False
        self.version += 1
        return True

    # --- translations ------------------------------------------------------------------

    def seller_to_crm(self, vendedor_id: Canonical) -> Mapped:
        username = self.sellers.get(_int(vendedor_id) or 0)
        if username:
            return Mapped(username)
        default = self.sellers.get(self.defaults.vendedor_id or 0)
        return Mapped(default, f"seller {vendedor_id} has no CRM user (vendedores.crm_usuario)")

    def seller_to_erp(self, username: Canonical) -> Mapped:
        for vendedor_id, mapped in self.sellers.items():
            if mapped is not None and mapped == username:
                return Mapped(vendedor_id)
        return Mapped(
            self.defaults.vendedor_id,
            f"CRM user {username!r} is mapped to no seller (vendedores.crm_usuario)",
        )

    def branch_to_crm(self, sucursal_id: Canonical) -> Mapped:
        agency = self.branches.get(_int(sucursal_id) or 0)
        if agency:
            return Mapped(agency)
        default = self.branches.get(self.defaults.sucursal_id or 0)
        return Mapped(
            default, f"branch {sucursal_id} has no CRM agency (sucursales.crm_agencia_id)"
        )

    def branch_to_erp(self, agency_id: Canonical) -> Mapped:
        for sucursal_id, mapped in self.branches.items():
            if mapped is not None and mapped == agency_id:
                return Mapped(sucursal_id)
        return Mapped(
            self.defaults.sucursal_id,
            f"CRM agency {agency_id!r} is mapped to no branch (sucursales.crm_agencia_id)",
        )

    def translate(self, via: Via, value: Canonical, to: Side) -> Mapped:
        """A source value of a translated field in the target's terms (not REF/NUMBER)."""
        if via is Via.SELLER:
            return self.seller_to_crm(value) if to is Side.CRM else self.seller_to_erp(value)
        if via is Via.BRANCH:
            return self.branch_to_crm(value) if to is Side.CRM else self.branch_to_erp(value)
        if via in VOCABULARIES:
            return Mapped(translate_word(via, value, to))
        return Mapped(value)

    # --- what needs a person --------------------------------------------------------------

    def unmapped(self) -> dict[str, list[str]]:
        """CRM users and agencies no seller or branch points at, and sellers and branches
        that point at nothing the CRM knows."""
        mapped_users = {u for u in self.sellers.values() if u}
        mapped_agencies = {a for a in self.branches.values() if a}
        return {
            "crm_users": sorted(set(self.crm_users) - mapped_users),
            "crm_agencies": sorted(self.crm_agencies - mapped_agencies),
            "sellers": sorted(str(v) for v, u in self.sellers.items() if not u),
            "branches": sorted(str(b) for b, a in self.branches.items() if not a),
        }

    def as_json(self) -> dict[str, object]:
        d = self.defaults
        return {
            "version": self.version,
            "sellers": {str(k): v for k, v in sorted(self.sellers.items())},
            "branches": {str(k): v for k, v in sorted(self.branches.items())},
            "defaults": {
                "sucursal_id": d.sucursal_id,
                "vendedor_id": d.vendedor_id,
                "tipo_expediente": d.tipo_expediente,
                "serie": d.serie,
                "zero_placeholders_on_pnr": d.zero_placeholders_on_pnr,
            },
            "unmapped": self.unmapped(),
        }


def _put(table: dict[K, str | None], key: K | None, value: str | None, deleted: bool) -> None:
    if key is None:
        return
    if deleted:
        table.pop(key, None)
    else:
        table[key] = value


def _int(value: Canonical) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _str(value: Canonical) -> str | None:
    return None if value is None else str(value)
