"""Conflict rule: concurrent edits of a field resolve the same way on both sides."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.core.conflicts import RESTAMP, SAME, Current, Decision, Incoming, Policy, decide
from streams.core.model import Side


def edit(side: Side, before: str | None, after: str | None, at: int, base: int | None) -> Incoming:
    return Incoming(side, before, after, at, False, base=base)


def test_a_target_still_at_the_version_the_source_changed_takes_the_change() -> None:
    d = decide(edit(Side.ERP, "a", "b", 200, base=100), Current("a", 100), Policy.LATER_WINS)
    assert d == Decision(apply=True, conflict=False)


def test_a_target_already_at_the_after_image_is_a_no_op() -> None:
    d = decide(edit(Side.ERP, "a", "b", 200, base=100), Current("b", 300), Policy.LATER_WINS)
    assert d == SAME


def test_the_same_value_set_by_another_change_takes_the_winning_version_of_it() -> None:
    older = Current("b", 100)
    assert decide(edit(Side.CRM, "a", "b", 200, 50), older, Policy.LATER_WINS) == RESTAMP
    assert decide(edit(Side.CRM, "a", "b", 50, 10), Current("b", 100), Policy.LATER_WINS) == SAME
    # Under a side policy the winning side's version is kept, whichever is later.
    assert decide(edit(Side.CRM, "a", "b", 200, 50), older, Policy.ERP_WINS) == SAME
    assert decide(edit(Side.ERP, "a", "b", 50, 10), older, Policy.ERP_WINS) == RESTAMP
    assert decide(edit(Side.ERP, "a", "b", 100, 10), older, Policy.ERP_WINS) == SAME


def test_later_commit_wins_with_a_tie_going_to_the_erp() -> None:
    later = decide(edit(Side.CRM, "a", "c", 300, 100), Current("e", 200), Policy.LATER_WINS)
    earlier = decide(edit(Side.ERP, "a", "e", 200, 100), Current("c", 300), Policy.LATER_WINS)
    assert later == Decision(apply=True, conflict=True)
    assert earlier == Decision(apply=False, conflict=True)
    tie_erp = decide(edit(Side.ERP, "a", "e", 300, 100), Current("c", 300), Policy.LATER_WINS)
    tie_crm = decide(edit(Side.CRM, "a", "c", 300, 100), Current("e", 300), Policy.LATER_WINS)
    assert tie_erp.apply and not tie_crm.apply


def test_the_same_value_from_another_version_is_concurrent() -> None:
    # The target went a → c → a (ABA) after the version the source changed: same value, other
    # version. The source never saw the target's edits.
    d = decide(edit(Side.ERP, "a", "e", 200, base=100), Current("a", 150), Policy.ERP_WINS)
    assert d == Decision(apply=True, conflict=True)
    d = decide(edit(Side.CRM, "a", "e", 200, base=100), Current("a", 150), Policy.ERP_WINS)
    assert d == Decision(apply=False, conflict=True)


def test_a_field_set_after_the_incoming_commit_is_a_conflict() -> None:
    d = decide(edit(Side.ERP, "a", "e", 200, base=300), Current("a", 300), Policy.LATER_WINS)
    assert d == Decision(apply=False, conflict=True)


def test_side_policies() -> None:
    erp_change = edit(Side.ERP, "a", "e", 100, 10)
    crm_change = edit(Side.CRM, "a", "c", 900, 10)
    assert decide(erp_change, Current("c", 900), Policy.ERP_WINS).apply
    assert not decide(crm_change, Current("e", 100), Policy.ERP_WINS).apply
    assert not decide(erp_change, Current("c", 900), Policy.CRM_WINS).apply
    assert decide(crm_change, Current("e", 100), Policy.CRM_WINS).apply


def test_a_full_push_is_always_decided_by_the_policy_against_a_different_value() -> None:
    pushed = Incoming(Side.ERP, None, "e", 100, True)
    assert decide(pushed, Current("c", 50), Policy.LATER_WINS) == Decision(True, True)
    assert decide(pushed, Current("c", 150), Policy.LATER_WINS) == Decision(False, True)
    assert decide(pushed, Current("c", 150), Policy.ERP_WINS) == Decision(True, True)
    assert decide(pushed, Current("c", None), Policy.CRM_WINS) == Decision(False, True)
    assert decide(pushed, Current("e", 150), Policy.LATER_WINS) == SAME


st_value = st.sampled_from(["a", "b", "c", None])


@given(
    st_value,
    st_value,
    st_value,
    st.integers(1, 5),
    st.integers(1, 5),
    st.sampled_from(list(Policy)),
)
def test_two_concurrent_edits_converge(
    base: str | None,
    erp_value: str | None,
    crm_value: str | None,
    t_erp: int,
    t_crm: int,
    policy: Policy,
) -> None:
    """Both sides edit the same field from the same base; each side then applies the other's
    change. Whatever the values, times and policy, they end equal."""
    erp_incoming = edit(Side.ERP, base, erp_value, t_erp, None)
    crm_incoming = edit(Side.CRM, base, crm_value, t_crm, None)
    # An edit that leaves the value as it was is no change: nothing is captured or sent.
    erp_edited, crm_edited = erp_value != base, crm_value != base
    crm_clock = t_crm if crm_edited else None
    erp_clock = t_erp if erp_edited else None
    at_crm = erp_edited and decide(erp_incoming, Current(crm_value, crm_clock), policy).apply
    at_erp = crm_edited and decide(crm_incoming, Current(erp_value, erp_clock), policy).apply
    crm_final = erp_value if at_crm else crm_value
    erp_final = crm_value if at_erp else erp_value
    assert crm_final == erp_final


def test_a_replayed_value_older_than_the_target_is_history_not_a_conflict() -> None:
    old = Incoming(Side.ERP, "a", "b", commit_us=100, full=False, replay=True, base=50)
    newer = Current("c", clock_us=200)
    assert decide(old, newer, Policy.LATER_WINS) == SAME
    # Not replayed, the same change is a conflict the later commit wins.
    live = Incoming(Side.ERP, "a", "b", commit_us=100, full=False, base=50)
    assert decide(live, newer, Policy.LATER_WINS) == Decision(apply=False, conflict=True)
    # A replay newer than the target's value (the target was restored) applies.
    restored = Current("a", clock_us=50)
    assert decide(old, restored, Policy.LATER_WINS) == Decision(apply=True, conflict=False)
    # A replay the policy decides against, as it did live, is not recorded again.
    concurrent = Current("c", clock_us=60)
    assert decide(old, concurrent, Policy.CRM_WINS) == Decision(apply=False, conflict=False)
