"""Conflict rule: may an incoming field value overwrite the target's current one?

Pure. Each field keeps a clock on each side: the commit time of the change that set its
current value (a local edit's own commit, or for a synced value its source's commit, so one
version of a field has the same clock on both sides). A change carries the clock of the value it
replaced (its base). It is concurrent with the target when the target no longer holds that very
version: another value, or the same value set by another change (an edit and its undo). Concurrent
changes are conflicts, resolved by policy; the same decision is taken on both sides from the same
clocks, so both converge to one value.

A full push (a record created, checked for sync, snapshotted or matched) has no base: each of its
fields carries its own clock, and where the target holds another value the policy picks one (the
sink then gives the source the target's value where the target's won).

A replayed change (`ofisync replay`, a dead letter retried) carries the commit time of the change
it came from. It is history: older than the target's field, it changes nothing; otherwise it is
decided as it was live, so it lands where the live change would have; and it is never recorded
as a conflict, because the conflict, if there was one, was decided and recorded when it was live.
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
    commit_us: int  # the clock of `after`
    full: bool  # no before-image to compare with (create, opt-in, snapshot, match)
    replay: bool = False  # re-sent history (`ofisync replay`, a dead letter retried)
    base: int | None = None  # the clock of `before`


class Current(NamedTuple):
    value: Canonical
    clock_us: int | None  # None: no change of this field is on record


class Decision(NamedTuple):
    apply: bool
    conflict: bool
    # The target already holds the value but from another change: it takes the incoming clock,
    # so both sides end with one version of an equal value (two sides that typed the same value
    # would otherwise judge each other's next edit concurrent for ever). Which version is kept
    # follows the policy, as a conflict between them would have.
    restamp: bool = False


SAME = Decision(apply=False, conflict=False)
APPLY = Decision(apply=True, conflict=False)
RESTAMP = Decision(apply=False, conflict=False, restamp=True)


def decide(incoming: Incoming, current: Current, policy: Policy) -> Decision:
    clock = current.clock_us or 0
    if current.value == incoming.after:
        if incoming.commit_us == clock or (incoming.replay and clock > incoming.commit_us):
            return SAME
        return RESTAMP if _wins(incoming, clock, policy) else SAME
    if incoming.replay and clock > incoming.commit_us:
        return SAME  # history older than the target's value: not a conflict, nothing to do
    concurrent = (
        incoming.full
        or clock > incoming.commit_us
        or current.value != incoming.before
        or current.clock_us != incoming.base
    )
    if not concurrent:
        return APPLY
    return Decision(apply=_wins(incoming, clock, policy), conflict=not incoming.replay)


def _wins(incoming: Incoming, clock: int, policy: Policy) -> bool:
    """Whether the incoming version beats the target's under the policy."""
    if policy is Policy.ERP_WINS:
        return incoming.source is Side.ERP
    if policy is Policy.CRM_WINS:
        return incoming.source is Side.CRM
    if incoming.commit_us != clock:
        return incoming.commit_us > clock
    return incoming.source is Side.ERP
