"""The worker's figures, as Prometheus metrics (served at /metrics) — one registry per process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

CHANGES = Counter(
    "ofisync_changes_total",
    "Captured changes read, by source and outcome",
    ["source", "outcome"],
    registry=REGISTRY,
)
ECHOES = Counter(
    "ofisync_echoes_suppressed_total",
    "Changes written by the sync itself, dropped",
    ["source"],
    registry=REGISTRY,
)
APPLIED = Counter(
    "ofisync_applied_total",
    "Commands applied to the target",
    ["target", "entity"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "ofisync_duplicates_skipped_total",
    "Redelivered commands skipped by the applied position",
    ["target"],
    registry=REGISTRY,
)
NOOPS = Counter(
    "ofisync_noops_total",
    "Commands whose values the target already held",
    ["target"],
    registry=REGISTRY,
)
HELD = Counter(
    "ofisync_held_back_total",
    "Changes not applied because of the target record's state: paused (unchecked in OfiViaje),"
    " flagged (deleted on the other side), gone (deleted on the target)",
    ["target", "reason"],
    registry=REGISTRY,
)
MATCHED = Counter(
    "ofisync_matched_total",
    "New records linked to one the target already had (same tax id or number) instead of created",
    ["target"],
    registry=REGISTRY,
)
CONFLICTS = Counter(
    "ofisync_conflicts_total",
    "Fields changed on both sides, resolved by policy",
    ["target"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "ofisync_dead_letters_total",
    "Messages sent to the dead-letter topic",
    ["stage"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "ofisync_transient_retries_total",
    "Batches retried because a database was unreachable",
    ["target"],
    registry=REGISTRY,
)
DEADLOCK_RETRIES = Counter(
    "ofisync_deadlock_retries_total",
    "Batches PostgreSQL rolled back to break a deadlock with another writer, and sent again",
    ["target"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "ofisync_end_to_end_seconds",
    "Source commit → target commit",
    ["direction"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
APPLY_BUSY = Counter(
    "ofisync_apply_busy_seconds",
    "Seconds this worker's sink for each target spent applying batches: its rate is the share"
    " of time the sink is busy (near 1, changes queue for it and latency climbs)",
    ["target"],
    registry=REGISTRY,
)
PARKED = Gauge(
    "ofisync_parked",
    "Changes waiting for their parent to be linked on the target",
    ["target"],
    registry=REGISTRY,
)
LOCK_VIOLATIONS = Counter(
    "ofisync_lock_violations_total",
    "Changes to fields the other side owns, undone and recorded",
    ["side"],
    registry=REGISTRY,
)
MAPPING_FALLBACKS = Counter(
    "ofisync_mapping_fallbacks_total",
    "Values with no mapping that took the header default",
    ["target", "mapping"],
    registry=REGISTRY,
)
MAPPING_VERSION = Gauge(
    "ofisync_mapping_changes",
    "Configuration changes (sellers, branches, defaults) folded into the live mapping",
    registry=REGISTRY,
)
DOCUMENTS = Gauge(
    "ofisync_documents",
    "OfiViaje documents marked for upload (G): waiting, and failing (with an error)",
    ["state"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "ofisync_consumer_lag",
    "Messages the consumer group has not committed yet",
    ["group", "topic", "partition"],
    registry=REGISTRY,
)
SLOT_WAL = Gauge(
    "ofisync_slot_retained_wal_bytes",
    "WAL a replication slot retains in its database",
    ["slot"],
    registry=REGISTRY,
)
COMPONENT_UP = Gauge(
    "ofisync_component_up",
    "1 when the component answers, 0 when it does not",
    ["component"],
    registry=REGISTRY,
)
DEAD_LETTERS_WAITING = Gauge(
    "ofisync_dead_letters_waiting",
    "Dead letters in the dead-letter topic not retried yet",
    registry=REGISTRY,
)

# Series that exist from the start at 0, so a first occurrence is an increase Prometheus sees.
for _stage in ("capture", "decode", "rules", "command", "apply"):
    DEAD_LETTERS.labels(_stage)
for _side in ("erp", "crm"):
    CONFLICTS.labels(_side)
    MATCHED.labels(_side)
    for _reason in ("paused", "flagged", "gone"):
        HELD.labels(_side, _reason)
    LOCK_VIOLATIONS.labels(_side)
    RETRIES.labels(_side)
    DEADLOCK_RETRIES.labels(_side)
    PARKED.labels(_side)
