"""The ofisync worker as a background process of the local stack (`ofisync worker` detached)."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Any

from streams.settings import Settings
from streams.stack.install import REPO
from streams.stack.procs import port_open, read_pid, spawn, terminate, wait_until


class WorkerProcess:
    """Worker `index` of the local stack: the first is the stack's own; more share its consumer
    group (and so its partitions), each with its web port moved up by its index."""

    def __init__(self, settings: Settings, index: int = 1) -> None:
        suffix = "" if index == 1 else f"-{index}"
        self.index = index
        self.name = f"worker{suffix}"
        self.settings = (
            settings
            if index == 1
            else replace(settings, web=replace(settings.web, port=settings.web.port + index - 1))
        )
        self.pid_file = settings.run / f"worker{suffix}.pid"
        self.log = settings.logs / f"worker{suffix}.log"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def health(self) -> dict[str, Any] | None:
        if not port_open(self.settings.web.host, self.settings.web.port):
            return None
        try:
            url = f"{self.settings.web_url}/health"
            with urllib.request.urlopen(url, timeout=3) as resp:
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def healthy(self) -> bool:
        return self.pid() is not None and (self.health() or {}).get("state") == "running"

    def start(self) -> None:
        if self.pid():
            return
        env = dict(os.environ)
        env["OFISYNC_WEB"] = str(self.settings.web)
        env["OFISYNC_WORKER_NAME"] = f"worker{self.index}"
        spawn(
            [sys.executable, "-m", "streams.cli", "worker"],
            self.log,
            self.pid_file,
            env=env,
            cwd=REPO,
        )
        wait_until(
            self.healthy,
            180,
            f"ofisync worker on {self.settings.web} (log: {self.log})",
            alive=lambda: self.pid() is not None,
        )

    def stop(self) -> bool:
        return terminate(self.pid_file, grace=30)


def worker_indices(settings: Settings) -> set[int]:
    """The indices of the workers whose pid files the stack holds (running or not)."""
    found = set()
    for path in settings.run.glob("worker*.pid"):
        suffix = path.stem.removeprefix("worker").removeprefix("-")
        if suffix == "":
            found.add(1)
        elif suffix.isdigit():
            found.add(int(suffix))
    return found
