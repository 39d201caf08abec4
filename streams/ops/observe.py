"""Observe (operations): what the dashboard and Prometheus show, sampled inside the worker.

Every few seconds the worker samples consumer lag (as Kafka's tool computes it), each slot's
retained WAL, the health of every component, its own counters, and the end-to-end latencies of
the last minute, keeps an hour of history, and sets the matching Prometheus gauges. The
decisions of what is wrong (`problems`) and the percentiles are pure functions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import psycopg

from streams.core.contract import CLIENT, FILE
from streams.core.mapping import Mapping as SyncMapping
from streams.core.model import Side
from streams.ops import dlq, lag
from streams.settings import Settings
from streams.worker import metrics

log = logging.getLogger("ofisync.observe")

SAMPLE_EVERY_S = 10.0  # its Kafka and database reads run in a thread that holds the GIL a while
HISTORY = 360  # one hour of samples
LATENCY_WINDOW_S = 60.0
TARGETS = (Side.CRM, Side.ERP)
DIRECTIONS = tuple(target.inbound for target in TARGETS)  # "erp_to_crm", "crm_to_erp"
WAL_BOUND = 1 << 30  # a slot retaining more than this is a problem


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def problems(state: Mapping[str, Any]) -> list[str]:
    """What needs attention, most serious first, in words."""
    found = [f"{name} is down" for name, up in state["health"].items() if not up]
    history = state.get("lag_history") or []
    if (
        state["total_lag"] > 0
        and len(history) >= 3
        and all(b > a for a, b in zip(history[-3:], history[-2:], strict=False))
    ):
        found.append(f"consumer lag is growing ({state['total_lag']} messages behind)")
    for slot in state["slots"]:
        if not slot.get("reachable", True):
            continue  # its database is down: said above
        if slot["retained_wal_bytes"] > WAL_BOUND:
            found.append(f"slot {slot['slot']} retains {slot['retained_wal_bytes']:,} bytes of WAL")
        if not slot["active"]:
            found.append(f"slot {slot['slot']} has no reader (is the connector running?)")
    if state["dead_letters"]:
        found.append(f"{state['dead_letters']} dead letter(s) wait (`ofisync dlq list`)")
    if state["parked"]:
        found.append(f"{state['parked']} change(s) wait for a parent to be linked")
    if state["documents"]["failing"]:
        found.append(f"{state['documents']['failing']} document(s) failing to upload")
    unmapped = state["unmapped"]
    count = sum(len(v) for v in unmapped.values())
    if count:
        found.append(f"{count} seller(s), branch(es) or CRM user(s)/agency(ies) unmapped")
    return found


class Latencies:
    """End-to-end latencies (source commit → applied) of the last minute, per direction."""

    def __init__(self) -> None:
        self._seen: deque[tuple[float, str, float]] = deque(maxlen=200_000)
        # The worker's loop adds while the dashboard sampler (a thread) reads.
        self._lock = threading.Lock()

    def add(self, direction: str, seconds: float) -> None:
        with self._lock:
            self._seen.append((time.monotonic(), direction, seconds))

    def window(self) -> dict[str, dict[str, float | None]]:
        since = time.monotonic() - LATENCY_WINDOW_S
        with self._lock:
            while self._seen and self._seen[0][0] < since:
                self._seen.popleft()
            seen = list(self._seen)
        out = {}
        for direction in DIRECTIONS:
            values = [s for _, d, s in seen if d == direction]
            out[direction] = {
                "p50": percentile(values, 0.5),
                "p99": percentile(values, 0.99),
                "count": float(len(values)),
            }
        return out


def per_direction(
    totals: Mapping[str, float], before: Mapping[str, float] | None, seconds: float
) -> dict[str, float]:
    """A counter by target, as its increase per second in each direction since the sample
    before (0 for the first sample): changes applied a second, or the share of time a sink was
    busy."""
    if before is None or seconds <= 0:
        return dict.fromkeys(DIRECTIONS, 0.0)
    return {
        target.inbound: (totals.get(target.value, 0.0) - before.get(target.value, 0.0)) / seconds
        for target in TARGETS
    }


def _counter(name: str, by: str) -> dict[str, float]:
    """A counter's current totals per value of one label."""
    out: dict[str, float] = {}
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name:
                key = sample.labels.get(by, "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3):
            return True
    except OSError:
        return False


def _connector_up(settings: Settings, side: str) -> bool:
    url = f"{settings.connect_url}/connectors/{settings.connector_name(side)}/status"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            status = json.load(response)
    except (OSError, ValueError):
        return False
    tasks = status.get("tasks") or []
    return status["connector"]["state"] == "RUNNING" and all(t["state"] == "RUNNING" for t in tasks)


def _db_counts(
    settings: Settings, dsns: Mapping[str, str]
) -> tuple[dict[str, bool], dict[str, int]]:
    up: dict[str, bool] = {}
    counts = {"conflicts": 0, "lock_violations": 0}
    for db in settings.databases:
        try:
            with psycopg.connect(dsns.get(db.side, db.dsn), connect_timeout=3) as conn:
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM ofisync.conflicts),"
                    " (SELECT count(*) FROM ofisync.lock_violations)"
                ).fetchone()
            assert row is not None
            counts["conflicts"] += int(row[0])
            counts["lock_violations"] += int(row[1])
            up[f"{db.side}_db"] = True
        except psycopg.Error:
            up[f"{db.side}_db"] = False
    return up, counts


class Observer:
    """Samples the figures; `state()` is what /dashboard/api/state returns."""

    def __init__(self, settings: Settings, mapping: Any, dsns: Mapping[str, str]) -> None:
        self.settings = settings
        self.dsns = dsns  # by side: the worker's own login, never a superuser
        self.mapping = mapping  # callable returning the live Mapping
        self.latencies = Latencies()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.current: dict[str, Any] | None = None
        self._totals_before: tuple[float, dict[str, dict[str, float]]] | None = None
        self._dead_letters = 0
        self._waiting_letters = dlq.WaitingCount(settings)
        self._lag = lag.LagReader(settings)

    async def run(self) -> None:
        while True:
            try:
                self.current = await asyncio.to_thread(self.sample)
            except Exception:  # observing must never stop the worker
                log.warning("could not sample the dashboard figures", exc_info=True)
            await asyncio.sleep(SAMPLE_EVERY_S)

    def sample(self) -> dict[str, Any]:
        s = self.settings
        now = time.time()
        health: dict[str, bool] = {}
        try:
            partitions = self._lag.read()
            health["kafka"] = True
        except Exception:
            partitions, health["kafka"] = [], False
        try:
            slots = [asdict(x) for x in lag.slot_lag(s, self.dsns)]
        except psycopg.Error:
            slots = []
        db_up, counts = _db_counts(s, self.dsns)
        health.update(db_up)
        health["connect"] = _answers(f"{s.connect_url}/connectors")
        for side in ("erp", "crm"):
            health[f"connector_{side}"] = _connector_up(s, side)
        health["worker"] = True
        if health["kafka"]:  # read incrementally: only what came since the last sample
            try:
                self._dead_letters = self._waiting_letters.count()
            except Exception:
                log.warning("could not read the dead letters", exc_info=True)
        totals = {
            "applied": _counter("ofisync_applied_total", "target"),
            "busy": _counter("ofisync_apply_busy_seconds_total", "target"),
        }
        then, earlier = self._totals_before or (now, None)
        rates, busy = (
            per_direction(totals[name], earlier[name] if earlier else None, now - then)
            for name in ("applied", "busy")
        )
        self._totals_before = (now, totals)
        metrics.DEAD_LETTERS_WAITING.set(self._dead_letters)
        mapping: SyncMapping = self.mapping()
        total_lag = sum(p.lag or 0 for p in partitions)
        latency = self.latencies.window()
        point = {
            "t": now,
            "total_lag": total_lag,
            "lag_by_group": _by_group(partitions),
            "rates": rates,
            "latency": latency,
            "wal": {x["slot"]: x["retained_wal_bytes"] for x in slots},
        }
        self.history.append(point)
        state = {
            "sampled_at": now,
            # With several workers, each counts the changes it applied itself; lag is the group's.
            "worker": {"name": s.worker_name, "of": s.workers},
            "health": health,
            "total_lag": total_lag,
            "lag_history": [p["total_lag"] for p in self.history],
            "partitions": [asdict(p) | {"lag": p.lag} for p in partitions],
            "slots": slots,
            "rates": rates,
            "busy": busy,
            "latency": latency,
            "echoes": _counter("ofisync_echoes_suppressed_total", "source"),
            "conflicts": counts["conflicts"],
            "lock_violations": counts["lock_violations"],
            "parked": int(sum(_counter("ofisync_parked", "target").values())),
            "dead_letters": self._dead_letters,
            "documents": {"waiting": 0, "failing": 0}
            | {k: int(v) for k, v in _counter("ofisync_documents", "state").items()},
            "fallbacks": _counter("ofisync_mapping_fallbacks_total", "mapping"),
            "unmapped": mapping.unmapped(),
            "history": list(self.history),
        }
        state["problems"] = problems(state)
        _export(partitions, slots, health)
        return state


def _by_group(partitions: Iterable[lag.PartitionLag]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in partitions:
        out[p.group] = out.get(p.group, 0) + (p.lag or 0)
    return out


def _export(
    partitions: Iterable[lag.PartitionLag],
    slots: Iterable[Mapping[str, Any]],
    health: Mapping[str, bool],
) -> None:
    for p in partitions:
        metrics.CONSUMER_LAG.labels(p.group, p.topic, str(p.partition)).set(p.lag or 0)
    for x in slots:
        metrics.SLOT_WAL.labels(x["slot"]).set(x["retained_wal_bytes"])
    for name, up in health.items():
        metrics.COMPONENT_UP.labels(name).set(1 if up else 0)


def attention(settings: Settings, mapping: SyncMapping, dsns: Mapping[str, str]) -> dict[str, Any]:
    """What needs a person: unmapped names, dead letters with their reason, recorded conflicts
    and lock violations, changes waiting (for a parent, or for a person to pick among records
    that match), records flagged because the other side deleted their pair, documents failing."""
    out: dict[str, Any] = {"unmapped": mapping.unmapped()}
    try:
        out["dead_letters"] = [d.summary() for d in dlq.read_all(settings) if not d.retried]
    except Exception as exc:
        out["dead_letters_error"] = f"could not read the dead letters: {exc}"
        out["dead_letters"] = []
    queries = {
        "conflicts": "SELECT detected_at, entity, target_key, field, incoming_source,"
        " incoming_value, local_value, policy, winner FROM ofisync.conflicts"
        " ORDER BY id DESC LIMIT 50",
        "lock_violations": "SELECT detected_at, entity, record_key, field, attempted_value,"
        " restored_value, attempted_by FROM ofisync.lock_violations ORDER BY id DESC LIMIT 50",
        "parked": "SELECT parked_at, source, entity, source_key, waiting_for, attempts"
        " FROM ofisync.parked ORDER BY id LIMIT 50",
    }
    for name in queries:
        out[name] = []
    out["documents_failing"] = []
    out["flagged_deleted"] = []
    for db in settings.databases:
        try:
            with psycopg.connect(dsns.get(db.side, db.dsn), connect_timeout=3) as conn:
                for name, query in queries.items():
                    cur = conn.execute(query)
                    columns = [c.name for c in cur.description or ()]
                    out[name] += [
                        {"database": db.side} | dict(zip(columns, map(_plain, row), strict=True))
                        for row in cur
                    ]
                for entity in (CLIENT, FILE):
                    table = entity.table(Side(db.side))
                    cur = conn.execute(
                        f"SELECT id, ofisync_deleted_at, ofisync_unlinked_from FROM {table}"
                        " WHERE ofisync_deleted_at IS NOT NULL ORDER BY id DESC LIMIT 50"
                    )
                    out["flagged_deleted"] += [
                        {
                            "side": db.side, "entity": entity.name, "table": table, "id": row[0],
                            "flagged_at": _plain(row[1]), "was_linked_to": row[2],
                            "to_link_again": f"UPDATE {table} SET ofisync_deleted_at = NULL"
                            f" WHERE id = {row[0]}",
                        }
                        for row in cur
                    ]  # fmt: skip
                if db.side == "erp":
                    cur = conn.execute(
                        "SELECT id, expediente_id, nombre_fichero, error_sync FROM documentos"
                        " WHERE estado_sync = 'G' AND error_sync IS NOT NULL ORDER BY id LIMIT 50"
                    )
                    columns = [c.name for c in cur.description or ()]
                    out["documents_failing"] = [
                        dict(zip(columns, map(_plain, row), strict=True)) for row in cur
                    ]
        except psycopg.Error as exc:
            out.setdefault("errors", []).append(f"{db.title}: {exc}")
    return out


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)
