"""Test-wide settings: the integration stack runs in its own OFISYNC_HOME on its own ports,
so it never collides with a stack a developer already runs; the jars are shared."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TEST_ENV = {
    "OFISYNC_HOME": str(REPO / ".ofisync" / "test"),
    "OFISYNC_LIB": str(REPO / ".ofisync" / "lib"),
    "OFISYNC_ERP_DSN": "postgresql://postgres@127.0.0.1:56432/ofiviaje",
    "OFISYNC_CRM_DSN": "postgresql://postgres@127.0.0.1:56433/oficrm",
    "OFISYNC_KAFKA": "127.0.0.1:19092",
    "OFISYNC_KAFKA_CONTROLLER": "127.0.0.1:19093",
    "OFISYNC_CONNECT": "http://127.0.0.1:18083",
    "OFISYNC_WEB": "http://127.0.0.1:16066",
}
os.environ.update(TEST_ENV)
