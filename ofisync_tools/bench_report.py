"""Benchmark report (operations): the tables `ofisync bench` prints from a run's JSON document
(ofisync_tools/bench.py makes it): one row per figure, ofisync beside native logical
replication, then where the machine's CPU time went by engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console

from ofisync_tools.bench_load import SYSTEMS
from ofisync_tools.machine_time import engines_seen


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    """A ratio, with fewer decimals the larger it is."""
    if value is None:
        return "-"
    return f"{value:,.{0 if value >= 100 else 1 if value >= 10 else 2}f}×"


def _verified(checks: Mapping[str, Any]) -> str:
    failed = [system for system in SYSTEMS if system in checks and not checks[system]["clean"]]
    return "✓" if not failed else "✗ " + ", ".join(failed)


def _size(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**20:,.1f} MiB" if value >= 2**20 else f"{value / 2**10:,.0f} KiB"


def table_rows(document: Mapping[str, Any]) -> list[tuple[str, str, str, str, str, str, str]]:
    """The table `ofisync bench` prints, one row per figure: scenario, direction, figure,
    ofisync, native, ratio (ofisync ÷ native), and whether the checks after the scenario
    (`verify`, the native copies) were clean."""
    rows: list[tuple[str, str, str, str, str, str, str]] = []
    for sc in document["scenarios"]:
        if sc.get("skipped"):
            rows.append((sc["title"], "", "skipped", "", "", "", sc["skipped"]))
            continue
        first = True
        for direction in sc["directions"]:
            ours, native = sc["ofisync"][direction], sc["native"].get(direction) or {}
            r = sc["ratio"].get(direction, {})
            arrow = direction.replace("_to_", "→")
            out: list[tuple[str, str, str, str, str]] = []  # figure, ofisync, native, ratio
            if sc["kind"] == "fixed":
                lo, ln = ours["latency_ms"] or {}, native.get("latency_ms") or {}
                for q in ("p50", "p95", "p99"):
                    out.append((f"{q} ms", _n(lo.get(q)), _n(ln.get(q), 1), _x(r.get(q)), ""))
                # Below the rate asked for: the bench clients were all still on their way.
                out.append(("written/s", _n(ours["written_per_s"]),
                            _n(native.get("written_per_s")), "", ""))  # fmt: skip
            elif sc["kind"] == "max":
                marks = ["*" if f.get("generator_bound") else "" for f in (ours, native)]
                out.append(("changes/s", _n(ours["landed_per_s"]) + marks[0],
                            _n(native.get("landed_per_s")) + marks[1],
                            _x(r.get("landed_per_s")), ""))  # fmt: skip
                lo, ln = ours["latency_ms"] or {}, native.get("latency_ms") or {}
                ours_q = f"{_n(lo.get('p50'))} / {_n(lo.get('p99'))}"
                native_q = f"{_n(ln.get('p50'), 1)} / {_n(ln.get('p99'), 1)}"
                out.append(("p50 / p99 ms", ours_q, native_q, "", ""))
                out.append(("max lag", f"{_n(ours.get('max_lag'))} msgs",
                            _size(native.get("max_lag")), "", ""))  # fmt: skip
            else:
                out.append(("drain s", _n(ours["drain_s"], 1), _n(native.get("drain_s"), 1),
                            _x(r.get("drain_s")), ""))  # fmt: skip
                out.append(("changes/s", _n(ours["drain_per_s"]), _n(native.get("drain_per_s")),
                            "", ""))  # fmt: skip
                wo, wn = ours.get("rows_written") or {}, native.get("rows_written") or {}
                out.append(("other rows/change", _n(wo.get("other_rows_per_change"), 2),
                            _n(wn.get("other_rows_per_change"), 2), "", ""))  # fmt: skip
            for i, (figure, a, b, c, _) in enumerate(out):
                rows.append((sc["title"] if first else "", arrow if i == 0 else "", figure, a, b,
                             c, _verified(sc["checks"]) if first else ""))  # fmt: skip
                first = False
    return rows


ENGINE_TITLES = {  # two lines each, to fit the machine table in 110 columns
    "worker": "ofisync\nworker",
    "postgres_writes": "PG\nwrites",
    "postgres_reads": "PG\nreads",
    "postgres_rest": "PG\nrest",
    "connect": "Kafka\nConnect",
    "kafka": "\nKafka",
    "bench": "\nbench",
    "other": "\nother",
}


def machine_rows(document: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The second table `ofisync bench` prints: where the machine's time went in each scenario,
    per system: each engine's share of a core (100 = one core busy) and its CPU time per change
    that landed. The header, then the rows."""
    results = [r for sc in document["scenarios"] for r in sc.get("cpu", {}).values()]
    engines = engines_seen(results)
    header = ["scenario", "system", "figure", "changes\n/s", *(ENGINE_TITLES[e] for e in engines),
              "\ntotal"]  # fmt: skip
    rows: list[list[str]] = []
    for sc in document["scenarios"]:
        first = True
        for system, r in sc.get("cpu", {}).items():
            if "percent_of_a_core" not in r:
                continue
            percent, per_change = r["percent_of_a_core"], r.get("cpu_us_per_change") or {}
            rows.append([sc["key"] if first else "", system, "%", _n(r["changes_per_s"]),
                         *(_n(percent[e]) for e in engines), _n(r["total_percent"])])  # fmt: skip
            rows.append(["", "", "µs", "", *(_n(per_change.get(e)) for e in engines),
                         _n(sum(per_change.values()) if per_change else None)])  # fmt: skip
            first = False
    return header, rows


def warmup_line(warmup: Mapping[str, Any]) -> str:
    """The warm-up before the scenarios, which no figure above includes: its p99 per system
    and direction, so a cold stack's first seconds stay visible."""
    parts = []
    for system in SYSTEMS:
        for direction, found in (warmup.get(system) or {}).items():
            p99 = (found["latency_ms"] or {}).get("p99")
            lost = f", {found['lost']} lost" if found["lost"] else ""
            parts.append(f"{system} {direction.replace('_to_', '→')} {_n(p99)}{lost}")
    return (
        f"Warm-up before the scenarios (in no figure above): {warmup['seconds']:.0f} s at"
        f" {warmup['rate_per_direction']}/s each way; p99 ms: {', '.join(parts)}."
    )


def print_table(document: Mapping[str, Any], console: Console | None = None) -> None:
    """The run as a table on stdout, with the versions, the machine and the verdict."""
    from rich import box
    from rich.table import Table

    out = console or Console()
    if not out.is_terminal:
        out.width = max(out.width, 110)
    v, m = document["versions"], document["machine"]
    table = Table(
        title=f"ofisync bench ({document['mode']}, run {document['run']},"
        f" {document['seconds']:.0f} s)",
        box=box.SIMPLE_HEAD,
    )
    for name in ("scenario", "direction", "figure", "ofisync", "native", "ratio", "verify"):
        table.add_column(
            name, justify="right" if name in ("ofisync", "native", "ratio") else "left"
        )
    for row in table_rows(document):
        table.add_row(*row)
    out.print(table)
    out.print(
        "ratio = ofisync ÷ native. Latency: source commit → target commit, per change."
        " verify: `ofisync verify` clean and every native copy equal to its source."
        " * the load generator, not the system, was the limit."
    )
    warmup = document.get("warmup")
    if warmup:
        out.print(warmup_line(warmup))
    out.print(
        f"Kafka {v.get('kafka')}, Debezium {v.get('debezium')}, PostgreSQL"
        f" {v.get('postgresql_erp')}, Python {v.get('python')}, faust"
        f" {v.get('faust-streaming')}; {m['cores']} cores, {m['memory_gib']} GiB;"
        f" {m.get('workers', 1)} ofisync worker process(es) (OFISYNC_WORKERS);"
        f" load average {m['load_average_before'][0]:.1f} → {m['load_average_after'][0]:.1f}"
    )
    header, rows = machine_rows(document)
    if rows:
        machine_table = Table(
            title=f"where the machine's time went ({m['cores']} cores: {100 * m['cores']} % is"
            " all of them busy)",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        for i, name in enumerate(header):
            machine_table.add_column(name, justify="left" if i < 3 else "right", no_wrap=True)
        for cells in rows:
            machine_table.add_row(*cells)
        out.print(machine_table)
        out.print(
            "CPU time of every process on the machine (/proc), by engine, while each scenario ran"
            " (catch-up: from the restart until drained). %: the share of one core; µs: CPU time"
            " per change landed. PG writes: the sessions that apply changes; PG reads:"
            " the walsenders; PG rest: the bench's load and PostgreSQL's own processes; bench:"
            " the load generator."
        )
    boarding = document.get("onboarding")
    if boarding:
        out.print(
            f"onboard: {boarding['clients_per_side']:,} clients and"
            f" {boarding['files_per_side']:,} files a side, {boarding['done']['linked']:,} pairs"
            f" linked in {boarding['link_s']:.1f} s ({_n(boarding['linked_per_s'])}/s; survey"
            f" {boarding['survey_s']:.1f} s){'' if boarding['clean'] else ' ✗ not all linked'}"
        )
    base = document["baseline_check"]
    if not base["clean"]:
        out.print(f"✗ verify was not clean before the run: {base['detail']}")
    out.print(
        "✓ every check clean, nothing lost"
        if document["clean"]
        else "✗ a check failed or changes were lost: see above, or --json"
    )
