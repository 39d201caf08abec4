"""The `ofisync` command: the operator's entry to the stack and the worker.

Exit codes: 0 ok, 1 a check found a problem, 2 usage or environment error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
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
        for worker in stack.workers:
            url = worker.settings.web_url
            print(f"  {worker.name:<13} {url}/dashboard/   metrics {url}/metrics")
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

    from streams.ops.lag import report

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
        if not s["reachable"]:
            print(f"{s['database']:<14} {s['slot']:<16} the database does not answer")
            continue
        print(
            f"{s['database']:<14} {s['slot']:<16} {s['active']!s:<7}"
            f" {s['retained_wal_bytes']:>14,} {s['unconfirmed_bytes']:>12,}"
        )
    return OK


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from streams.ops.verify import verify

    try:
        report = verify(settings)
    except psycopg.OperationalError as exc:
        raise StackError(
            f"a database did not answer ({str(exc).strip().splitlines()[0]});"
            " is the stack up (`ofisync up`)?"
        ) from exc
    if args.json:
        print(json.dumps(report.as_json(), indent=2, default=str))
        return OK if report.clean else PROBLEM
    pairs = ", ".join(f"{n} {entity}" for entity, n in report.pairs.items())
    print(f"compared {pairs} linked pairs")
    for d in report.differences:
        print(
            f"✗ {d.entity} erp {d.erp_id} ⇄ crm {d.crm_id}: {d.field}:"
            f" {d.erp_value!r} ≠ {d.crm_value!r}"
        )
    for o in report.one_sided:
        print(
            f"✗ {o.entity} linked on the {o.side} side only:"
            f" {o.side} {o.id} → {o.link}: {o.problem}"
        )
    if report.paused:
        print(f"‖ {len(report.paused)} linked pair(s) paused (unchecked in OfiViaje): not compared")
    if report.clean:
        print("✓ no difference")
    else:
        print(f"{len(report.differences)} difference(s), {len(report.one_sided)} one-sided link(s)")
    return OK if report.clean else PROBLEM


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from streams.core.topics import Topics
    from streams.ops import dlq

    try:
        letters = dlq.read_all(settings)
        if args.action == "list":
            return _dlq_list(letters, args.json)
        if args.action == "show":
            found = [d for d in letters if d.id == args.id]
            if not found:
                raise StackError(_no_letter(args.id))
            detail = found[0].summary() | {"original": found[0].original()}
            print(json.dumps(detail, indent=2, ensure_ascii=False, default=str))
            return OK
        chosen = (
            [d for d in letters if not d.retried]
            if args.all
            else [d for d in letters if d.id == args.id]
        )
        if not args.all and not chosen:
            raise StackError(_no_letter(args.id))
        topics = Topics(settings.tenant)
        sent = dlq.retry(
            settings,
            chosen,
            lambda d: print(f"↻ {d.id} sent back to {d.destination(topics)}", flush=True),
        )
        print(f"{sent} dead letter(s) sent back; any that fail again reappear in `dlq list`")
        return OK
    except KafkaError as exc:
        raise StackError(
            f"Kafka at {settings.kafka} did not answer ({exc}); is the stack up (`ofisync up`)?"
        ) from exc


def _no_letter(wanted: str) -> str:
    return (
        f"no dead letter {wanted!r}: a dead letter's id is partition:offset in the dead-letter"
        " topic (like 0:12), as `ofisync dlq list` shows them"
    )


def _dlq_list(letters: list[Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps([d.summary() for d in letters], indent=2, ensure_ascii=False))
        return OK
    waiting = [d for d in letters if not d.retried]
    for d in letters:
        mark = "↻" if d.retried else "✗"
        print(f"{mark} {d.id:<8} {d.stage:<8} {d.topic}[{d.partition}]@{d.offset}: {d.reason}")
    print(f"{len(waiting)} dead letter(s) waiting, {len(letters) - len(waiting)} retried")
    return OK


def _since_ms(text: str) -> int:
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise StackError(
            f"--since {text!r} is not an ISO time; write e.g. 2026-11-27T10:30:00Z"
        ) from exc
    if when.tzinfo is None:
        when = when.astimezone()  # the machine's local time
    return int(when.timestamp() * 1000)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError
    from rich.progress import Progress

    from streams.core.model import Side
    from streams.ops.replay import ReplayError, replay

    since = _since_ms(args.since)
    sources = [Side(args.source)] if args.source else list(Side)
    what = " and ".join(s.value for s in sources)
    try:
        with Progress(transient=False) as bar:
            task = bar.add_task(f"replaying {what} changes", total=None)

            def show(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            outcomes = replay(settings, sources, since, args.entity, show)
    except ReplayError as exc:
        raise StackError(str(exc)) from exc
    except KafkaError as exc:
        raise StackError(
            f"Kafka at {settings.kafka} did not answer ({exc}); is the stack up (`ofisync up`)?"
        ) from exc
    summary = ", ".join(f"{n} {what}" for what, n in sorted(outcomes.items())) or "nothing"
    print(f"replayed {what} since {args.since}: {summary}")
    print("the worker applies them now; `ofisync lag` shows when it has caught up")
    return OK


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from streams.ops import doctor

    checks = doctor.run(settings)
    if args.json:
        print(json.dumps(doctor.as_json(checks), indent=2, ensure_ascii=False))
    else:
        area = None
        for c in checks:
            if c.area != area:
                area = c.area
                print(area)
            print(f"  {'✓' if c.ok else '✗'} {c.name}: {c.detail}")
            if not c.ok and c.fix:
                print(f"      → {c.fix}")
        bad = sum(not c.ok for c in checks)
        print(f"\n{bad} problem(s) found" if bad else "\n✓ no problem found")
    return OK if all(c.ok for c in checks) else PROBLEM


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from ofisync_tools.bench import run_bench
    from ofisync_tools.bench_report import print_table

    document = run_bench(settings, quick=args.quick)
    if args.json:
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print_table(document)
    return OK if document["clean"] else PROBLEM


def cmd_faults(settings: Settings, args: argparse.Namespace) -> int:
    from ofisync_tools import faults
    from streams.stack.orchestrate import PlainProgress, Stack

    stack = Stack(settings)
    stack.up(demo=False, progress=PlainProgress())
    chosen = [
        s
        for s in faults.scenarios(
            db_hold_s=10 if args.quick else 60, hold_s=5 if args.quick else 15
        )
        if not args.only or s.name in args.only
    ]
    history = not args.only or faults.HISTORY in args.only
    if not chosen and not history:
        raise StackError(f"no scenario named {args.only}; see `ofisync faults --help`")
    outcomes = [
        faults.run_scenario(
            stack,
            scenario,
            rate=10 if args.quick else 20,
            load_s=5 if args.quick else 15,
            say=lambda text: print(f"… {text}", file=sys.stderr, flush=True),
        )
        for scenario in chosen
    ]
    if history:
        outcomes.append(
            faults.run_history_scenario(
                stack,
                steps=150 if args.quick else 2000,
                seed=args.seed,
                say=lambda text: print(f"… {text}", file=sys.stderr, flush=True),
            )
        )
    if args.json:
        print(json.dumps(faults.as_json(outcomes), indent=2))
    else:
        print(faults.table(outcomes))
    return OK if all(o.ok for o in outcomes) else PROBLEM


ONBOARD_LABELS = {
    "create_in_crm": "to create in the CRM",
    "create_in_erp": "to create in OfiViaje",
    "ambiguous": "ambiguous (a person picks)",
    "stay_unchecked": "stay in OfiViaje (not checked)",
    "clients_differ": "same number, other clients (left apart)",
}


def cmd_onboard(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg
    from rich.progress import Progress

    from streams.ops import onboard

    try:
        with (
            psycopg.connect(settings.erp.dsn, connect_timeout=10) as erp,
            psycopg.connect(settings.crm.dsn, connect_timeout=10) as crm,
        ):
            found = onboard.survey(erp, crm)
        done: dict[str, int] = {}
        if not args.dry_run:
            with Progress(transient=False) as bar:
                tasks: dict[str, Any] = {}

                def show(what: str, n: int, total: int) -> None:
                    if what not in tasks:
                        tasks[what] = bar.add_task(f"linking {what}", total=total)
                    bar.update(tasks[what], completed=n, total=total)

                done = onboard.onboard(settings, show)
    except psycopg.OperationalError as exc:
        raise StackError(
            f"a database did not answer ({str(exc).strip().splitlines()[0]});"
            " is the stack up (`ofisync up`)?"
        ) from exc
    if args.csv:
        Path(args.csv).write_text(onboard.csv_text(found))
    document = found.as_json() | ({"done": done} if done else {})
    if args.json:
        print(json.dumps(document, indent=2))
        return OK
    verb = "would link" if args.dry_run else "linked"
    for key, n in document["counts"].items():
        entity, what = key.split(" ", 1)
        label = ONBOARD_LABELS.get(what, verb)
        print(f"{entity:<8} {label:<42} {n:>8,}")
    if done:
        print(", ".join(f"{n:,} {what}" for what, n in done.items()))
    if args.csv:
        print(f"every record: {args.csv}")
    return OK


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from streams.worker.app import run_worker

    run_worker(settings)
    return OK


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "lag": cmd_lag,
    "verify": cmd_verify,
    "dlq": cmd_dlq,
    "replay": cmd_replay,
    "doctor": cmd_doctor,
    "faults": cmd_faults,
    "bench": cmd_bench,
    "worker": cmd_worker,
    "onboard": cmd_onboard,
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
    verify = sub.add_parser("verify", help="compare both databases over every linked pair")
    verify.add_argument("--json", action="store_true")
    dlq = sub.add_parser("dlq", help="dead letters: why each failed, and retrying them")
    dlq_sub = dlq.add_subparsers(dest="action", required=True)
    dlq_list = dlq_sub.add_parser("list", help="every dead letter with its reason")
    dlq_list.add_argument("--json", action="store_true")
    dlq_sub.add_parser("show", help="one dead letter with its original message").add_argument(
        "id", help="the id `dlq list` shows (partition:offset)"
    )
    dlq_retry = dlq_sub.add_parser("retry", help="send dead letters back once the cause is fixed")
    which = dlq_retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="the id `dlq list` shows")
    which.add_argument("--all", action="store_true", help="every dead letter not retried yet")
    rp = sub.add_parser("replay", help="re-read captured changes since a time and apply again")
    rp.add_argument(
        "--source",
        choices=["erp", "crm"],
        help="only the changes captured on this side (default: both; after a restore, both)",
    )
    rp.add_argument(
        "--since", required=True, help="ISO time, e.g. 2026-11-27T10:30:00Z (no zone: local)"
    )
    rp.add_argument("--entity", help="only this record type: client, file, segment, document")
    doc = sub.add_parser("doctor", help="find configuration problems before they bite")
    doc.add_argument("--json", action="store_true")
    bench = sub.add_parser(
        "bench", help="latency, throughput and catch-up on the running stack, against native"
    )
    bench.add_argument("--json", action="store_true", help="one JSON document with every figure")
    bench.add_argument(
        "--quick", action="store_true", help="seconds per scenario and a small backlog (smoke)"
    )
    fl = sub.add_parser(
        "faults", help="kill, stop and lock parts of the local stack under load; count losses"
    )
    fl.add_argument("--quick", action="store_true", help="short holds and load (a smoke check)")
    fl.add_argument("--json", action="store_true")
    fl.add_argument(
        "--only",
        nargs="+",
        metavar="SCENARIO",
        help="worker-sigkill broker-restart connect-restart erp-db-down crm-db-down"
        " crm-long-transaction two-workers-kill-one random-history",
    )
    fl.add_argument(
        "--seed", type=int, default=28, help="the random history's seed (it is reproducible)"
    )
    ob = sub.add_parser(
        "onboard", help="link the records both sides already hold (first activation); resumable"
    )
    ob.add_argument(
        "--dry-run", action="store_true", help="report what it would do; change nothing"
    )
    ob.add_argument("--json", action="store_true", help="one JSON document with every record")
    ob.add_argument("--csv", metavar="FILE", help="write every record and what becomes of it")
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
