"""What follows a batch's commit: a failure to count its outcome never holds back what waits on
it (raised, the committed batch would go again for ever and its direction would stall)."""

from __future__ import annotations

import asyncio
from typing import cast

from streams.apply.parking import ParentKey
from streams.apply.results import BatchResult
from streams.core.model import Side
from streams.ops.observe import Latencies
from streams.worker.applying import Applier
from streams.worker.dead_letters import DeadLetters


def test_a_batch_whose_outcome_cannot_be_counted_still_wakes_what_waits_on_it() -> None:
    parked: list[Side] = []
    linked: list[list[ParentKey]] = []
    applier = Applier(
        {}, cast(DeadLetters, None), Latencies(), on_linked=linked.append, on_parked=parked.append
    )
    parent: ParentKey = ("client", "erp", "7")
    # A counter cannot go down: this count makes the metrics raise.
    result = BatchResult(parked=1, lock_violations=-1, linked=[parent])
    asyncio.run(applier.settle(Side.CRM, result, {}))
    assert parked == [Side.CRM]
    assert linked == [[parent]]
