"""What follows a batch's commit: a failure to count its outcome never holds back what waits on
it (raised, the committed batch would go again for ever and its direction would stall), and a
mapping fallback is counted for every value but not logged for every batch."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import cast

import pytest

from streams.apply.parking import ParentKey
from streams.apply.results import BatchResult
from streams.core.model import Side, Via
from streams.ops.observe import Latencies
from streams.worker import metrics
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


def test_a_mapping_fallback_is_counted_for_every_value_and_said_once_in_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    applier = Applier({}, cast(DeadLetters, None), Latencies(), lambda _: None, lambda _: None)

    def seller() -> float:
        labels = {"target": Side.CRM.value, "mapping": Via.SELLER.value}
        return metrics.REGISTRY.get_sample_value("ofisync_mapping_fallbacks_total", labels) or 0.0

    counted = seller()
    reason = "seller 9 has no CRM user"
    with caplog.at_level(logging.WARNING, logger="ofisync.worker"):
        for _ in range(3):
            result = BatchResult(fallbacks=Counter({(Via.SELLER, reason): 4}))
            asyncio.run(applier.settle(Side.CRM, result, {}))
    assert seller() == counted + 12
    said = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
    assert said == [
        f"mapping fallback on crm: {reason}; used the header default for 4 values (said again at"
        " most every 600 s while it recurs)"
    ]
