"""Order (apply stage, before the sink): a batch's commands with new parents first.

A batch gathers the commands of several command partitions, and a record's partition follows its
key: a new file and its segments, written in one CRM transaction, reach OfiViaje's sink in one
batch but in any order. Taken as they came, a segment ahead of its file found no parent and was
parked, to be released up to half a second later; most new segments were.

So the records whose commands in the batch are all upserts of an entity that others refer to
(clients, then files) go first; everything else follows in the order it came. A record's own
commands keep their order (they share one tier), and deletes, restores and zeroing are never
moved ahead of a change that came before them.
"""

from __future__ import annotations

from collections.abc import Sequence

from streams.apply.parking import record_key
from streams.core.contract import ENTITIES
from streams.core.model import Command, CommandOp

# Entities that others refer to, parents before children (ENTITIES lists parents first).
_PARENT_TIER = {
    name: tier
    for tier, name in enumerate(
        name
        for name in ENTITIES
        if any(e.parent is not None and e.parent.ref == name for e in ENTITIES.values())
    )
}
_THE_REST = len(_PARENT_TIER)
_UPSERT = CommandOp.UPSERT  # members as module names (streams/core/model.py says why)


def parents_first(commands: Sequence[Command]) -> list[Command]:
    """`commands` with the upserts of parent records first (see the module docstring)."""
    if all(c.entity not in _PARENT_TIER for c in commands):
        return list(commands)
    not_only_upserts = {record_key(c) for c in commands if c.op is not _UPSERT}

    def tier(cmd: Command) -> int:
        if record_key(cmd) in not_only_upserts:
            return _THE_REST
        return _PARENT_TIER.get(cmd.entity, _THE_REST)

    return sorted(commands, key=tier)  # stable: each tier keeps the order commands came in
