"""The ofisync worker as a background process of the local stack (`ofisync worker` detached)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

from streams.settings import Settings
from streams.stack.install import REPO
from streams.stack.procs import port_open, read_pid, spawn, terminate, wait_until


class WorkerProcess:
    name = "worker"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid_file = settings.run / "worker.pid"
        self.log = settings.logs / "worker.log"

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
        spawn(
            [sys.executable, "-m", "streams.cli", "worker"],
            self.log,
            self.pid_file,
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
