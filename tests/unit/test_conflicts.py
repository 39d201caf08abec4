"""Conflict rule: concurrent edits of a field resolve the same way on both sides."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.core.conflicts import Current, Decision, Incoming, Policy, decide
from streams.core.model import Side


def test_a_target_still_at_the_before_image_takes_the_change() -> None:
    d = decide(Incoming(Side.ERP, "a", "b", 200, False), Current("a", 100), Policy.LATER_WINS)
    assert d == Decision(apply=True, conflict=False)


def test_a_target_already_at_the_after_image_is_a_no_op() -> None:
    d = decide(Incoming(Side.ERP, "a", "b", 200, False), Current("b", 300), Policy.LATER_WINS)
    assert d == Decision(apply=False, conflict=False)


def test_later_commit_wins_with_a_tie_going_to_the_erp() -> None:
    later = decide(Incoming(Side.CRM, "a", "c", 300, False), Current("e", 200), Policy.LATER_WINS)
    earlier = decide(Incoming(Side.ERP, "a", "e", 200, False), Current("c", 300), Policy.LATER_WINS)
    assert later == Decision(apply=True, conflict=True)
    assert earlier == Decision(apply=False, conflict=True)
    tie_erp = decide(Incoming(Side.ERP, "a", "e", 300, False), Current("c", 300), Policy.LATER_WINS)
    tie_crm = decide(Incoming(Side.CRM, "a", "c", 300, False), Current("e", 300), Policy.LATER_WINS)
    assert tie_erp.apply and not tie_crm.apply


def test_a_field_set_after_the_incoming_commit_is_a_conflict_even_at_the_before_image() -> None:
    # ABA on the target: it went a → c → a after the source changed a → e.
    d = decide(Incoming(Side.ERP, "a", "e", 200, False), Current("a", 300), Policy.LATER_WINS)
    assert d == Decision(apply=False, conflict=True)


def test_side_policies() -> None:
    erp_change = Incoming(Side.ERP, "a", "e", 100, False)
    crm_change = Incoming(Side.CRM, "a", "c", 900, False)
    assert decide(erp_change, Current("c", 900), Policy.ERP_WINS).apply
    assert not decide(crm_change, Current("e", 100), Policy.ERP_WINS).apply
    assert not decide(erp_change, Current("c", 900), Policy.CRM_WINS).apply
    assert decide(crm_change, Current("e", 100), Policy.CRM_WINS).apply


st_value = st.sampled_from(["a", "b", "c", None])


@given(
    st_value,
    st_value,
    st_value,
    st.integers(0, 5),
    st.integers(0, 5),
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
    erp_incoming = Incoming(Side.ERP, base, erp_value, t_erp, False)
    crm_incoming = Incoming(Side.CRM, base, crm_value, t_crm, False)
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
    old = Incoming(Side.ERP, "a", "b", commit_us=100, full=False, replay=True)
    newer = Current("c", clock_us=200)
    assert decide(old, newer, Policy.LATER_WINS) == Decision(apply=False, conflict=False)
    # Not replayed, the same change is a conflict the later commit wins.
    live = Incoming(Side.ERP, "a", "b", commit_us=100, full=False)
    assert decide(live, newer, Policy.LATER_WINS) == Decision(apply=False, conflict=True)
    # A replay newer than the target's value (the target was restored) applies.
    restored = Current("a", clock_us=50)
    assert decide(old, restored, Policy.LATER_WINS) == Decision(apply=True, conflict=False)
