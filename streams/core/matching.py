"""Matching (rules stage): which existing records on both sides are the same thing, so the sync
links them instead of creating a second one. Pure.

Exact, never fuzzy: clients by tax id, written however either application keeps it (case, spaces,
dashes, dots, a country prefix: `tax_key`, which the database's `ofisync.tax_key` says the same
way, tested), files by their number where the numbers cross (OfiViaje's `numero` and the CRM's
`file_number`). A key that matches one record on each side is a pair; a key with several records
on either side is ambiguous and waits for a person; the rest are on one side only.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

_SEPARATORS = re.compile(r"[\s\-./]")
_PREFIXED_NIF = re.compile(r"[A-Z]{2}[0-9A-Z]{9}")

K = TypeVar("K", bound=Hashable)


def tax_key(value: object) -> str | None:
    """A tax id as records are matched on: upper case, no separators, and no two-letter country
    prefix in front of a nine-character Spanish NIF/NIE/CIF ("es-b 1234567-8" → "B12345678")."""
    if not isinstance(value, str):
        return None
    key = _SEPARATORS.sub("", value).upper()
    if _PREFIXED_NIF.fullmatch(key):
        key = key[2:]
    return key or None


@dataclass
class Matches(Generic[K]):
    """Records of both sides grouped by key: (OfiViaje id, CRM id) pairs, keys with more than one
    record on a side, and the records on one side only."""

    pairs: list[tuple[int, int, K]] = field(default_factory=list)
    ambiguous: list[tuple[K, list[int], list[int]]] = field(default_factory=list)
    erp_only: list[tuple[int, K | None]] = field(default_factory=list)
    crm_only: list[tuple[int, K | None]] = field(default_factory=list)


def match(erp: Iterable[tuple[int, K | None]], crm: Iterable[tuple[int, K | None]]) -> Matches[K]:
    """Pairs the records of both sides that share a key, one to one. A record without a key
    matches nothing."""
    by_key: dict[K, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    found: Matches[K] = Matches()
    for side, records in ((0, erp), (1, crm)):
        for record_id, key in records:
            if key is None:
                (found.erp_only if side == 0 else found.crm_only).append((record_id, None))
            else:
                by_key[key][side].append(record_id)
    for key, (erp_ids, crm_ids) in by_key.items():
        if len(erp_ids) == 1 and len(crm_ids) == 1:
            found.pairs.append((erp_ids[0], crm_ids[0], key))
        elif erp_ids and crm_ids:
            found.ambiguous.append((key, sorted(erp_ids), sorted(crm_ids)))
        else:
            found.erp_only += [(i, key) for i in erp_ids]
            found.crm_only += [(i, key) for i in crm_ids]
    return found
