"""The local stack's worker processes: how many, their names and web ports, and which ones
`down` finds to stop (no process is started here)."""

from __future__ import annotations

from pathlib import Path

from streams.settings import Settings
from streams.stack.orchestrate import Stack
from streams.stack.worker_process import worker_indices


def test_each_worker_has_its_own_name_and_web_port(tmp_path: Path) -> None:
    settings = Settings.from_env({"OFISYNC_HOME": str(tmp_path), "OFISYNC_WORKERS": "3"})
    stack = Stack(settings)
    assert [w.name for w in stack.workers] == ["worker", "worker-2", "worker-3"]
    assert [w.settings.web.port for w in stack.workers] == [6066, 6067, 6068]
    assert stack.worker is stack.workers[0]
    assert [w.log.name for w in stack.workers] == ["worker.log", "worker-2.log", "worker-3.log"]


def test_down_finds_every_worker_an_earlier_up_left_a_pid_file_for(tmp_path: Path) -> None:
    settings = Settings.from_env({"OFISYNC_HOME": str(tmp_path)})
    settings.run.mkdir(parents=True)
    for name in ("worker.pid", "worker-3.pid", "worker-x.pid", "kafka.pid"):
        (settings.run / name).write_text("1")
    assert worker_indices(settings) == {1, 3}
