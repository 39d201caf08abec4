"""What the dashboard says is wrong, and the latency percentiles it shows."""

from __future__ import annotations

import threading
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streams.ops.observe import WAL_BOUND, Latencies, per_direction, percentile, problems


def healthy() -> dict[str, Any]:
    return {
        "health": {"kafka": True, "erp_db": True, "worker": True},
        "total_lag": 0,
        "lag_history": [0, 0, 0],
        "slots": [{"slot": "t_erp", "retained_wal_bytes": 100, "active": True}],
        "dead_letters": 0,
        "parked": 0,
        "documents": {"waiting": 0, "failing": 0},
        "unmapped": {"crm_users": [], "crm_agencies": [], "sellers": [], "branches": []},
    }


def test_a_healthy_state_has_no_problem() -> None:
    assert problems(healthy()) == []


def test_a_component_down_comes_first() -> None:
    state = healthy() | {"dead_letters": 2, "health": {"kafka": True, "erp_db": False}}
    found = problems(state)
    assert found[0] == "erp_db is down" and "2 dead letter(s)" in found[1]


def test_growing_lag_is_a_problem_but_steady_or_draining_lag_is_not() -> None:
    assert any(
        "growing" in p for p in problems(healthy() | {"total_lag": 9, "lag_history": [1, 5, 9]})
    )
    assert not problems(healthy() | {"total_lag": 5, "lag_history": [9, 7, 5]})


def test_slots_parked_documents_and_mapping_gaps_are_named() -> None:
    state = healthy() | {
        "slots": [{"slot": "t_crm", "retained_wal_bytes": WAL_BOUND + 1, "active": False}],
        "parked": 3,
        "documents": {"waiting": 4, "failing": 1},
        "unmapped": {"crm_users": ["ana"], "crm_agencies": [], "sellers": [], "branches": []},
    }
    text = " | ".join(problems(state))
    for words in ("retains", "no reader", "3 change(s) wait", "1 document(s) failing", "1 seller"):
        assert words in text


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) is None


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1), st.floats(0, 1))
def test_a_percentile_is_one_of_the_values(values: list[float], q: float) -> None:
    assert percentile(values, q) in values


def test_latencies_can_be_read_while_they_are_added() -> None:
    # The worker's loop adds latencies while the dashboard sampler, a thread, reads them.
    latencies = Latencies()
    for _ in range(20_000):
        latencies.add("erp_to_crm", 0.1)

    def add() -> None:
        for _ in range(100_000):
            latencies.add("crm_to_erp", 0.2)

    adder = threading.Thread(target=add)
    adder.start()
    while adder.is_alive():
        assert latencies.window()["erp_to_crm"]["count"] == 20_000
    adder.join()
    assert latencies.window()["crm_to_erp"]["count"] == 100_000


def test_a_counter_by_target_becomes_its_rate_in_the_direction_that_target_receives() -> None:
    totals = {"crm": 30.0, "erp": 8.0}
    assert per_direction(totals, {"crm": 10.0, "erp": 4.0}, 4.0) == {
        "erp_to_crm": 5.0,
        "crm_to_erp": 1.0,
    }
    # A target first counted since the sample before counts from 0.
    assert per_direction(totals, {"crm": 10.0}, 2.0) == {"erp_to_crm": 10.0, "crm_to_erp": 4.0}


def test_the_first_sample_has_no_rate_yet() -> None:
    zero = {"erp_to_crm": 0.0, "crm_to_erp": 0.0}
    assert per_direction({"crm": 30.0, "erp": 8.0}, None, 10.0) == zero
    assert per_direction({"crm": 30.0, "erp": 8.0}, {"crm": 1.0, "erp": 1.0}, 0.0) == zero
