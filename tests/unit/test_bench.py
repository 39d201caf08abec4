"""The benchmark's pure parts: pacing, percentiles and rates, tags, and the shape of what it
reports (the JSON document and the table printed from it)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from ofisync_tools.bench_load import Change, Landing, Lane, Route, Values, bookkeeping, tag, tag_of
from ofisync_tools.bench_measure import (
    QUICK,
    TICK_S,
    Headway,
    document,
    due,
    figures,
    landed_rate,
    pause,
    per_second,
    ratio,
    stats,
)
from ofisync_tools.bench_report import machine_rows, table_rows, warmup_line
from ofisync_tools.machine_time import ENGINES
from streams.core.model import Side

# --- pacing ----------------------------------------------------------------------------------


def test_a_paced_load_owes_what_the_rate_makes_due_and_never_less_than_nothing() -> None:
    assert due(0.0, 200, 0) == 0
    assert due(1.0, 200, 0) == 200
    assert due(1.0, 200, 150) == 50
    assert due(0.5, 500, 300) == 0  # ahead of the schedule: owes nothing
    assert due(0.3, 10, 0) == 3  # no float rounding lost at exact boundaries


def test_the_pause_waits_for_the_next_change_within_a_tick_and_a_ceiling() -> None:
    assert pause(0.0, 10, 1) == pytest.approx(0.1)  # next due at 0.2 s, capped at 0.1 s
    assert pause(0.0, 20, 0) == pytest.approx(0.05)
    assert pause(0.0, 500, 0) == TICK_S  # due every 2 ms: wait a tick, write several
    assert pause(2.0, 200, 100) == TICK_S  # behind schedule: come back after a tick


@pytest.mark.parametrize("rate", [200, 500])
def test_pacing_holds_the_rate_in_small_transactions(rate: int) -> None:
    """Simulated clock: the loop writes what is due, then sleeps as `pause` says."""
    t, written, transactions = 0.0, 0, 0
    seconds = 5.0
    while t < seconds:
        owed = due(t, rate, written)
        if owed:
            written += owed
            transactions += 1
        t += pause(t, rate, written)
    assert abs(written - rate * seconds) <= math.ceil(rate * TICK_S)
    assert written / transactions <= rate * TICK_S + 1  # a tick's worth per transaction


# --- figures ---------------------------------------------------------------------------------


def test_a_wait_gives_up_only_after_no_headway_for_the_stall_time() -> None:
    now = [0.0]
    headway = Headway(10.0, clock=lambda: now[0])
    assert not headway.stalled(5)
    now[0] = 9.0
    assert not headway.stalled(5)
    now[0] = 15.0
    assert not headway.stalled(6)  # it grew: the stall time starts again
    now[0] = 25.5
    assert headway.stalled(6)
    assert headway.stalled(3)  # falling back is no headway either


def test_stats_are_nearest_rank_percentiles_in_ms() -> None:
    found = stats([float(v) for v in range(100, 0, -1)])
    assert found == {"count": 100, "p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0,
                     "mean": 50.5}  # fmt: skip
    assert stats([]) is None
    single = stats([12.345])
    assert single is not None and single["p50"] == single["p99"] == 12.3


def test_rates_count_what_landed_inside_the_window() -> None:
    times = [1_000_000, 1_500_000, 2_100_000, 2_900_000, 3_000_000, 9_000_000]
    assert landed_rate(times, 1_000_000, 3_000_000) == 2.0  # 4 in 2 s; the end is excluded
    assert landed_rate(times, 5, 5) == 0.0
    assert per_second(times, 1_000_000, 3_500_000) == [2, 2, 1]


def test_ratio_is_ofisync_over_native_when_both_exist() -> None:
    assert ratio(150.0, 1.5) == 100.0
    assert ratio(1.0, 3.0) == 0.33
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None


def test_a_tag_is_found_again_at_the_start_of_the_notes() -> None:
    t = tag("a1b2c3", 42)
    assert tag_of(t) == t
    assert tag_of(f"{t} · Prefiere asiento de ventanilla.") == t
    assert tag_of("Cliente VIP: atención preferente.") is None
    assert tag_of("bench") is None
    assert tag_of(None) is None


# --- what a lane measured --------------------------------------------------------------------


def _lane() -> Lane:
    route = Route(
        system="ofisync",
        source=Side.ERP,
        source_dsn="",
        target_dsn="",
        landings={"client": Landing("accounts", "id", "notes"), "file": Landing("files", "erp_id")},
        arrived="pg_xact_commit_timestamp(xmin)",
        pairs=((1, 101), (2, 102)),
    )
    values = Values((), (), (), (None,), (None,), ((None, None),))
    lane = Lane(route, values, "r", iter(range(1, 100)))
    lane.written = 4
    lane.landed = [
        Change("client", 101, 7, "bench r 1", (1, 101), source_us=1_000_000, target_us=1_080_000),
        Change("client", 102, 7, "bench r 2", (2, 102), source_us=1_000_000, target_us=1_120_000),
        Change("file", 55, 8, None, None, source_us=2_000_000, target_us=2_050_000),
    ]
    lane.waiting["file"][56] = Change("file", 56, 8)
    return lane


def test_a_lane_reports_latency_overall_and_per_kind_and_what_did_not_land() -> None:
    found = figures(_lane(), seconds=2.0)
    assert found["system"] == "ofisync"
    assert (found["written"], found["landed"], found["lost"]) == (4, 3, 1)
    assert found["written_per_s"] == 2.0
    assert found["latency_ms"]["p50"] == 80.0 and found["latency_ms"]["max"] == 120.0
    assert found["by_kind"]["file"]["count"] == 1
    assert found["by_kind"]["client"]["p99"] == 120.0


# --- the document and the table --------------------------------------------------------------


def _check(clean: bool = True) -> dict[str, Any]:
    return {"clean": clean, "detail": "", "attempts": 1, "seconds": 0.1}


def _latency(p50: float) -> dict[str, float]:
    return {"count": 10, "p50": p50, "p95": p50 * 2, "p99": p50 * 3, "max": p50 * 4,
            "mean": p50}  # fmt: skip


def _cpu(worker: float, connect: float) -> dict[str, Any]:
    percent = {e: 0.0 for e in ENGINES} | {"worker": worker, "connect": connect}
    return {"seconds": 10.0, "percent_of_a_core": percent, "total_percent": worker + connect,
            "changes": 4000, "changes_per_s": 400.0,
            # CPU s over the 10 s window, per change, in µs
            "cpu_us_per_change": {e: round(p / 10 * 1e6 / 4000) for e, p in percent.items()},
            "cores": 2}  # fmt: skip


def _scenarios(native_clean: bool = True, lost: int = 0) -> list[dict[str, Any]]:
    both = ["erp_to_crm", "crm_to_erp"]
    fixed = {
        "key": "fixed-200", "kind": "fixed", "title": "fixed 200/s each way", "params": {},
        "directions": both,
        "ofisync": {d: {"latency_ms": _latency(100.0), "written_per_s": 199.0, "lost": lost}
                    for d in both},
        "native": {d: {"latency_ms": _latency(1.0), "written_per_s": 200.0, "lost": 0}
                   for d in both},
        "checks": {"ofisync": _check(), "native": _check(native_clean)},
        "ratio": {d: {"p50": 100.0, "p95": 100.0, "p99": 100.0} for d in both},
        "cpu": {"ofisync": _cpu(worker=54.0, connect=38.0),
                "native": _cpu(worker=0.0, connect=0.0)},
    }  # fmt: skip
    top = {
        "key": "max", "kind": "max", "title": "max rate, one way", "params": {},
        "directions": ["erp_to_crm"],
        "ofisync": {"erp_to_crm": {"landed_per_s": 150.0, "latency_ms": _latency(5000.0),
                                   "max_lag": 1800, "generator_bound": False}},
        "native": {"erp_to_crm": {"landed_per_s": 5000.0, "latency_ms": _latency(2.0),
                                  "max_lag": 3 * 2**20, "generator_bound": True}},
        "checks": {"ofisync": _check(), "native": _check()},
        "ratio": {"erp_to_crm": {"landed_per_s": 0.03}},
    }  # fmt: skip
    skipped = {
        "key": "catch-up", "kind": "catch-up", "title": "catch-up 5,000", "params": {},
        "directions": ["erp_to_crm"], "ofisync": {}, "native": {}, "checks": {}, "ratio": {},
        "skipped": "the worker was not started by `ofisync up` on this stack",
    }  # fmt: skip
    return [fixed, top, skipped]


def _warmup(lost: int = 0) -> dict[str, Any]:
    latency = {"count": 400, "p50": 31.0, "p95": 80.0, "p99": 181.4, "max": 210.0, "mean": 40.0}
    return {
        "rate_per_direction": 200,
        "seconds": 10.0,
        "ofisync": {"erp_to_crm": {"latency_ms": latency, "lost": lost},
                    "crm_to_erp": {"latency_ms": latency, "lost": 0}},
        "native": {"erp_to_crm": {"latency_ms": {**latency, "p99": 2.2}, "lost": 0}},
    }  # fmt: skip


def _document(warmup_lost: int = 0, **kwargs: Any) -> dict[str, Any]:
    return document(
        run="a1b2c3",
        plan=QUICK,
        started=1_800_000_000.0,
        versions={"kafka": "4.3.1", "debezium": "3.6.1.Final", "postgresql_erp": "15.18"},
        machine={
            "cores": 2,
            "memory_gib": 23.5,
            "load_average_before": (1.0, 1.0, 1.0),
            "load_average_after": (2.0, 1.0, 1.0),
        },
        baseline=_check(),
        scenarios=_scenarios(**kwargs),
        warmup=_warmup(warmup_lost),
    )


def test_the_document_holds_every_part_and_is_one_json_document() -> None:
    doc = _document()
    for key in ("run", "mode", "started_at", "seconds", "clean", "plan", "method", "versions",
                "machine", "baseline_check", "scenarios"):  # fmt: skip
        assert key in doc
    assert doc["mode"] == "quick" and doc["plan"]["backlog"] == QUICK.backlog
    assert doc["clean"] is True
    assert json.loads(json.dumps(doc))["scenarios"][1]["ratio"] == {
        "erp_to_crm": {"landed_per_s": 0.03}
    }


def test_a_failed_check_or_a_lost_change_makes_the_run_unclean() -> None:
    assert _document(native_clean=False)["clean"] is False
    assert _document(lost=3)["clean"] is False
    assert _document(warmup_lost=1)["clean"] is False


def test_the_warm_up_is_reported_apart_with_its_p99_per_system_and_direction() -> None:
    doc = _document(warmup_lost=2)
    assert doc["warmup"]["seconds"] == 10.0
    assert warmup_line(doc["warmup"]) == (
        "Warm-up before the scenarios (in no figure above): 10 s at 200/s each way; p99 ms:"
        " ofisync erp→crm 181, 2 lost, ofisync crm→erp 181, native erp→crm 2."
    )


def test_the_table_has_a_row_per_figure_with_both_systems_and_their_ratio() -> None:
    rows = table_rows(_document(native_clean=False))
    assert all(len(r) == 7 for r in rows)
    fixed = rows[:8]
    assert fixed[0] == ("fixed 200/s each way", "erp→crm", "p50 ms", "100", "1.0", "100×",
                        "✗ native")  # fmt: skip
    assert [r[2] for r in fixed] == ["p50 ms", "p95 ms", "p99 ms", "written/s"] * 2
    assert fixed[4][1] == "crm→erp" and fixed[4][6] == ""
    top = rows[8:11]
    assert top[0][:6] == ("max rate, one way", "erp→crm", "changes/s", "150", "5,000*", "0.03×")
    assert top[0][6] == "✓"
    assert top[2][3:5] == ("1,800 msgs", "3.0 MiB")
    assert rows[11][0] == "catch-up 5,000" and rows[11][2] == "skipped"


def test_the_machine_table_shows_each_engine_that_used_time_per_system() -> None:
    header, rows = machine_rows(_document())
    assert header == ["scenario", "system", "figure", "changes\n/s", "ofisync\nworker",
                      "Kafka\nConnect", "\ntotal"]  # fmt: skip
    assert rows == [
        ["fixed-200", "ofisync", "%", "400", "54", "38", "92"],
        ["", "", "µs", "", "1,350", "950", "2,300"],
        ["", "native", "%", "400", "0", "0", "0"],
        ["", "", "µs", "", "0", "0", "0"],
    ]  # the other scenarios measured nothing (or were skipped)


def test_the_rows_written_per_change_besides_the_target_row() -> None:
    before = {
        "erp": {"public.clientes": 100, "ofisync.parked": 5},
        "crm": {"public.accounts": 40, "ofisync.conflicts": 1},
    }
    after = {
        "erp": {"public.clientes": 103, "ofisync.parked": 6},  # 3 link-backs, 1 parked
        "crm": {"public.accounts": 240, "ofisync.conflicts": 3, "ofisync.new": 2},
    }
    found = bookkeeping(before, after, Side.CRM, changes=200)
    assert found == {"target_rows_per_change": 1.0, "other_rows_per_change": 0.04}
    # Seen from the other side, OfiViaje's rows are the target's and the CRM's the source's.
    assert bookkeeping(before, after, Side.ERP, changes=100) == {
        "target_rows_per_change": 0.03,
        "other_rows_per_change": 2.05,
    }
