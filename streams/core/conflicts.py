"""Conflict rule: may an incoming field value overwrite the target's current one?

Pure. Each field keeps a clock on each side: the commit time of the change that set its
current value (a local edit's own commit, or for a synced value its source's commit).
A change is concurrent with the target when the target no longer holds the value the source
had before (the before-image), or when the target's field was set after the source's commit.
Concurrent changes are conflicts, resolved by policy; the same decision is taken on both sides
from the same two clocks, so both converge to one value. A replayed change older than the
target's field is history, not a conflict: it changes nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from streams.core.model import Canonical, Side


class Policy(StrEnum):
    LATER_WINS = "later_wins"  # per field, the later commit wins (ties: OfiViaje)
    ERP_WINS = "erp_wins"
    CRM_WINS = "crm_wins"


# Named tuples, not frozen dataclasses: the sink builds one of each per changed field.
class Incoming(NamedTuple):
    source: Side
    before: Canonical
    after: Canonical
    commit_us: int
    full: bool  # no before-image to compare with (create, opt-in, snapshot)
    replay: bool = False  # re-sent history (`ofisync replay`)


class Current(NamedTuple):
    value: Canonical
    clock_us: int | None  # None: no change of this field is on record


class Decision(NamedTuple):
    apply: bool
    conflict: bool


SAME = Decision(apply=False, conflict=False)


def decide(incoming: Incoming, current: Current, policy: Policy) -> Decision:
    if current.value == incoming.after:
        return SAME
    clock = current.clock_us or 0
    if incoming.replay and clock > incoming.commit_us:
        return SAME  # history older than the target's value: not a conflict, nothing to do
    concurrent = clock > incoming.commit_us or (
        not incoming.full and current.value != incoming.before
    )
    if not concurrent:
        return Decision(apply=True, conflict=False)
    if policy is Policy.ERP_WINS:
        wins = incoming.source is Side.ERP
    elif policy is Policy.CRM_WINS:
        wins = incoming.source is Side.CRM
    elif incoming.commit_us != clock:
        wins = incoming.commit_us > clock
    else:
        wins = incoming.source is Side.ERP
    return Decision(apply=wins, conflict=True)
