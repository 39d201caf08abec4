"""Monitoring (deploy/monitoring): the Prometheus config, the alert rules and the Grafana dashboard
parse; every alert is complete; every ofisync_* metric they query is one the worker exports
(KNOWN_METRICS, the contract), with labels it has; the contract agrees with streams.metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from streams.worker import metrics

MONITORING: Final = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"


@dataclass(frozen=True)
class Exported:
    """One metric of the contract: its Prometheus type and its label names."""

    kind: str  # "counter", "gauge" or "histogram"
    labels: tuple[str, ...] = ()


# What the worker exports at /metrics (the contract the dashboard and the alerts are written to).
KNOWN_METRICS: Final[dict[str, Exported]] = {
    "ofisync_changes_total": Exported("counter", ("source", "outcome")),
    "ofisync_echoes_suppressed_total": Exported("counter", ("source",)),
    "ofisync_applied_total": Exported("counter", ("target", "entity")),
    "ofisync_duplicates_skipped_total": Exported("counter", ("target",)),
    "ofisync_noops_total": Exported("counter", ("target",)),
    "ofisync_conflicts_total": Exported("counter", ("target",)),
    "ofisync_transient_retries_total": Exported("counter", ("target",)),
    "ofisync_dead_letters_total": Exported("counter", ("stage",)),
    "ofisync_end_to_end_seconds": Exported("histogram", ("direction",)),
    "ofisync_apply_busy_seconds_total": Exported("counter", ("target",)),
    "ofisync_parked": Exported("gauge", ("target",)),
    "ofisync_lock_violations_total": Exported("counter", ("side",)),
    "ofisync_mapping_fallbacks_total": Exported("counter", ("target", "mapping")),
    "ofisync_documents": Exported("gauge", ("state",)),
    "ofisync_consumer_lag": Exported("gauge", ("group", "topic", "partition")),
    "ofisync_slot_retained_wal_bytes": Exported("gauge", ("slot",)),
    "ofisync_component_up": Exported("gauge", ("component",)),
}
HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")
TARGET_LABELS: Final = frozenset({"job", "instance"})  # added by Prometheus to every series
SEVERITIES: Final = frozenset({"critical", "warning", "info"})


# --- the files -------------------------------------------------------------------------------


def _load(name: str) -> Any:
    text = (MONITORING / name).read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _load("alerts.yml")["groups"] for rule in group["rules"]]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def _dashboard_exprs() -> list[str]:
    dashboard = _load("grafana-dashboard.json")
    return [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]


def _all_exprs() -> list[str]:
    return [rule["expr"] for rule in _alerts()] + _dashboard_exprs()


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME = re.compile(r"(?<![\w:])(ofisync_\w+)")
_SELECTOR = re.compile(r"(?<![\w:])(ofisync_\w+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def _unquoted(expr: str) -> str:
    """The expression with its string literals emptied (a label value is not a metric name)."""
    return _STRING.sub('""', expr)


def _contract(name: str) -> Exported | None:
    """The contract metric a queried series name belongs to (a histogram's _bucket, _sum, _count
    belong to the histogram), or None."""
    if name in KNOWN_METRICS:
        return KNOWN_METRICS[name]
    for suffix in HISTOGRAM_SUFFIXES:
        base = KNOWN_METRICS.get(name.removesuffix(suffix))
        if name.endswith(suffix) and base is not None and base.kind == "histogram":
            return base
    return None


def _queried(expr: str) -> set[str]:
    return set(_NAME.findall(_unquoted(expr)))


# --- Prometheus ------------------------------------------------------------------------------


def test_prometheus_scrapes_the_worker_every_10s_and_loads_the_alerts() -> None:
    config = _load("prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    assert (MONITORING / "alerts.yml").is_file()
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "ofisync-worker"]
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "10s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == ["127.0.0.1:6066"]


def test_every_alert_is_complete() -> None:
    groups = _load("alerts.yml")["groups"]
    assert groups and all(group["name"] and group["rules"] for group in groups)
    alerts = _alerts()
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in alerts:
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
        assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_the_alerts_watch_what_can_go_wrong() -> None:
    exprs = [rule["expr"] for rule in _alerts()]
    queried = set().union(*map(_queried, exprs))
    assert {
        "ofisync_consumer_lag",
        "ofisync_slot_retained_wal_bytes",
        "ofisync_dead_letters_total",
        "ofisync_component_up",
        "ofisync_end_to_end_seconds_bucket",
        "ofisync_parked",
        "ofisync_documents",
        "ofisync_apply_busy_seconds_total",
    } <= queried
    assert any('up{job="ofisync-worker"}' in expr for expr in exprs)
    assert any("histogram_quantile(0.99" in expr for expr in exprs)


# --- the metrics every expression queries ----------------------------------------------------


@pytest.mark.parametrize("expr", _all_exprs())
def test_every_queried_metric_is_in_the_contract(expr: str) -> None:
    unknown = {name for name in _queried(expr) if _contract(name) is None}
    assert not unknown, f"not exported by the worker: {sorted(unknown)}"


@pytest.mark.parametrize("expr", _all_exprs())
def test_every_label_queried_is_one_the_metric_has(expr: str) -> None:
    bare = _unquoted(expr)
    for name, matchers in _SELECTOR.findall(bare):
        contract = _contract(name)
        if contract is None:
            continue  # an unknown name: the test above reports it
        allowed = (
            set(contract.labels) | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        )
        assert set(_MATCHER.findall(matchers)) <= allowed, f"{name}{{{matchers}}}"
    in_expr = [c for name in _queried(expr) if (c := _contract(name)) is not None]
    allowed = {label for c in in_expr for label in c.labels} | TARGET_LABELS | {"le"}
    for grouping in _GROUPING.findall(bare):
        labels = {label.strip() for label in grouping.split(",") if label.strip()}
        assert labels <= allowed, f"grouping by {sorted(labels - allowed)}"


def test_the_contract_agrees_with_the_registry() -> None:
    """Each contract metric the worker's registry already has is there with the same name, type
    and labels. prometheus_client names a counter's family without `_total`."""
    registered = {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in metrics.REGISTRY.collect()
    }
    for name, spec in KNOWN_METRICS.items():
        assert name.endswith("_total") == (spec.kind == "counter"), name
    by_base = {name.removesuffix("_total"): name for name in registered}
    overlap = [name for name in KNOWN_METRICS if name.removesuffix("_total") in by_base]
    assert overlap, "no contract metric is registered: is this the right registry?"
    for name in overlap:
        exported = by_base[name.removesuffix("_total")]
        assert (exported, registered[exported]) == (name, KNOWN_METRICS[name].kind)

    collectors = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    for collector in collectors:
        [family] = collector.describe()
        name = family.name + ("_total" if family.type == "counter" else "")
        contract = KNOWN_METRICS.get(name)
        if contract is None or not contract.labels:
            continue
        values = ["probe"] * len(contract.labels)
        # labels() refuses label names the metric does not have; remove() undoes the probe.
        collector.labels(**dict(zip(contract.labels, values, strict=True)))
        collector.remove(*values)


# --- Grafana ---------------------------------------------------------------------------------


def test_the_dashboard_takes_its_prometheus_from_a_datasource_variable() -> None:
    dashboard = _load("grafana-dashboard.json")
    assert dashboard["schemaVersion"] >= 36
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_every_panel_has_a_unique_id_and_a_place() -> None:
    panels = list(_panels(_load("grafana-dashboard.json")["panels"]))
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["id"]
        assert grid["h"] > 0 and grid["w"] > 0 and grid["x"] >= 0 and grid["y"] >= 0
        assert grid["x"] + grid["w"] <= 24, panel["id"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panels {cells.get((x, y))} and {panel['id']} overlap"
                cells[x, y] = panel["id"]


def test_the_dashboard_shows_what_the_worker_shows() -> None:
    dashboard = _load("grafana-dashboard.json")
    queried = set().union(*map(_queried, _dashboard_exprs()))
    assert {
        "ofisync_consumer_lag",
        "ofisync_slot_retained_wal_bytes",
        "ofisync_applied_total",
        "ofisync_end_to_end_seconds_bucket",
        "ofisync_apply_busy_seconds_total",
        "ofisync_echoes_suppressed_total",
        "ofisync_conflicts_total",
        "ofisync_lock_violations_total",
        "ofisync_parked",
        "ofisync_dead_letters_total",
        "ofisync_documents",
        "ofisync_mapping_fallbacks_total",
        "ofisync_component_up",
    } <= queried
    stats = [p for p in _panels(dashboard["panels"]) if p["type"] == "stat"]
    assert any("ofisync_component_up" in t["expr"] for p in stats for t in p["targets"])
    quantiles = " ".join(_dashboard_exprs())
    assert "histogram_quantile(0.5," in quantiles and "histogram_quantile(0.99," in quantiles
