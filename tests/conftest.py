"""Test-wide settings: the integration stack runs in its own OFISYNC_HOME on its own ports,
so it never collides with a stack a developer already runs; the jars are shared. What the
stack runs on is installed once, before the first test."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Every port of the test stacks lies below Linux's range for a connection's own end
# (32768-60999): there, any long-lived connection of the machine may hold one, and a server
# cannot start on it until that connection closes.
TEST_ENV = {
    "OFISYNC_HOME": str(REPO / ".ofisync" / "test"),
    "OFISYNC_LIB": str(REPO / ".ofisync" / "lib"),
    "OFISYNC_ERP_DSN": "postgresql://postgres@127.0.0.1:25432/ofiviaje",
    "OFISYNC_CRM_DSN": "postgresql://postgres@127.0.0.1:25433/oficrm",
    "OFISYNC_KAFKA": "127.0.0.1:19092",
    "OFISYNC_KAFKA_CONTROLLER": "127.0.0.1:19093",
    "OFISYNC_CONNECT": "http://127.0.0.1:18083",
    "OFISYNC_WEB": "http://127.0.0.1:16066",
}
os.environ.update(TEST_ENV)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Installs what the collected tests run on before the first of them starts: on a fresh
    machine the downloads take minutes, which belong to no test's timeout, and a registry
    that cannot be reached fails the run once, with the install's own error."""
    files = {Path(item.path) for item in session.items}
    under = {part for f in files for part in f.relative_to(REPO).parts[1:2]}
    if session.config.option.collectonly or not under & {"component", "integration"}:
        return
    from streams.settings import Settings
    from streams.stack import install
    from streams.stack.procs import StackError
    from tests.integration.helpers import pg_client_tools

    settings = Settings.from_env()
    steps: list[tuple[str, Callable[[], object]]] = [
        ("Kafka, Connect and Debezium jars", lambda: install.ensure_jars(settings)),
        ("PostgreSQL server", lambda: install.ensure_postgres(settings)),
    ]
    names = {f.name for f in files}
    if "test_operations.py" in names:
        steps.append(("PostgreSQL 18 client tools", lambda: pg_client_tools(settings)))
    if "test_marker_path.py" in names:
        steps.append(("Debian's PostgreSQL 15", lambda: install.debian_postgres(15)))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for title, step in steps:
        started = time.monotonic()
        try:
            step()
        except StackError as exc:
            pytest.exit(f"could not install the {title} the tests run on: {exc}", returncode=3)
        if reporter is not None:
            reporter.write_line(f"ready: {title} ({time.monotonic() - started:.0f} s)")
