"""Faults under a steady mixed load in both directions on the real stack, each ending with
nothing lost, nothing duplicated and a clean verify (the quick versions of `ofisync faults`;
the databases stopped for a while are covered by test_operations and test_documents)."""

from __future__ import annotations

import pytest

from ofisync_tools import faults
from streams.stack.orchestrate import Stack

QUICK = {s.name: s for s in faults.scenarios(db_hold_s=10, hold_s=5)}


@pytest.mark.parametrize(
    "name",
    ["worker-sigkill", "connect-restart", "crm-long-transaction", "two-workers-kill-one"],
)
def test_under_load_nothing_is_lost_or_duplicated(stack: Stack, name: str) -> None:
    outcome = faults.run_scenario(stack, QUICK[name], rate=10, load_s=4, say=print)
    assert outcome.sent["erp"] > 0 and outcome.sent["crm"] > 0
    assert (outcome.lost, outcome.duplicated) == (0, 0)
    assert outcome.converge_s is not None, "it converged"
    assert outcome.verify_clean, outcome.note
