"""The `ofisync` command: the operator's entry to the stack and the worker.

Exit codes: 0 ok, 1 a check found a problem, 2 usage or environment error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from streams.settings import Settings, SettingsError
from streams.stack.procs import StackError

OK, PROBLEM, USAGE = 0, 1, 2


def _stack(settings: Settings) -> Any:
    from streams.stack.orchestrate import Stack

    return Stack(settings)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from streams.stack.orchestrate import PlainProgress

    stack = _stack(settings)
    stack.up(demo=args.demo, progress=PlainProgress(), with_worker=not args.no_worker)
    print()
    print("ofisync is up:")
    for db in settings.databases:
        print(f"  {db.title:<13} {db.safe_dsn}")
    print(f"  Kafka         {settings.kafka}")
    print(f"  Kafka Connect {settings.connect_url}")
    if not args.no_worker:
        print(f"  worker        {settings.web_url}/health   metrics {settings.web_url}/metrics")
    print(f"  logs          {settings.logs}")
    return OK


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from streams.stack.orchestrate import PlainProgress

    _stack(settings).down(PlainProgress())
    return OK


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    report = _stack(settings).status()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for c in report["components"]:
            mark = "✓" if c["healthy"] else "✗"
            pid = c["pid"] if c["pid"] is not None else "-"
            print(f"{mark} {c['name']:<14} pid {pid!s:<8} {c['endpoint']}")
        for c in report["connectors"]:
            mark = "✓" if c["healthy"] else "✗"
            tasks = ", ".join(f"task {t['id']} {t['state']}" for t in c["tasks"]) or "no tasks"
            print(f"{mark} connector {c['name']:<14} {c['state']} ({tasks})")
        if not report["healthy"]:
            print("\nsomething is down: `ofisync up` restarts it; logs are in", settings.logs)
    return OK if report["healthy"] else PROBLEM


def cmd_lag(settings: Settings, args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from streams.lag import report

    try:
        data = report(settings)
    except KafkaError as exc:
        raise StackError(
            f"Kafka at {settings.kafka} did not answer ({exc}); is the stack up (`ofisync up`)?"
        ) from exc
    if args.json:
        print(json.dumps(data, indent=2))
        return OK
    print(f"{'GROUP':<22} {'TOPIC':<34} {'PART':>4} {'COMMITTED':>10} {'END':>10} {'LAG':>8}")
    for p in data["partitions"]:
        committed = "-" if p["committed"] is None else p["committed"]
        lag = "-" if p["lag"] is None else p["lag"]
        print(
            f"{p['group']:<22} {p['topic']:<34} {p['partition']:>4} {committed:>10}"
            f" {p['end']:>10} {lag:>8}"
        )
    print(f"total lag: {data['total_lag']}")
    print()
    print(f"{'DATABASE':<14} {'SLOT':<16} {'ACTIVE':<7} {'RETAINED WAL':>14} {'UNCONFIRMED':>12}")
    for s in data["slots"]:
        print(
            f"{s['database']:<14} {s['slot']:<16} {s['active']!s:<7}"
            f" {s['retained_wal_bytes']:>14,} {s['unconfirmed_bytes']:>12,}"
        )
    return OK


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    run_worker(settings)
    return OK


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "lag": cmd_lag,
    "worker": cmd_worker,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ofisync", description="OfiViaje ⇄ OfiCrmTravel sync: run, watch and repair it."
    )
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="install what is missing and start the whole local stack")
    up.add_argument("--demo", action="store_true", help="load realistic demo data")
    up.add_argument("--no-worker", action="store_true", help="start everything but the worker")
    sub.add_parser("down", help="stop everything `up` started; data stays")
    st = sub.add_parser("status", help="health of every component")
    st.add_argument("--json", action="store_true")
    lag = sub.add_parser("lag", help="consumer lag per group/topic/partition and slot WAL")
    lag.add_argument("--json", action="store_true")
    sub.add_parser("worker", help="run the sync worker in the foreground")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return COMMANDS[args.command](settings, args)
    except (SettingsError, StackError) as exc:
        print(f"ofisync {args.command}: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
