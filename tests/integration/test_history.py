"""A randomized two-sided history on the real stack (issue 28; ofisync_tools/history.py): a short
run, seeded and reproducible. `ofisync faults --only random-history` runs a long one."""

from __future__ import annotations

import os
import signal

from ofisync_tools.history import run_history
from streams.core.topics import Topics
from streams.stack.orchestrate import Stack
from tests.integration.helpers import eventually, settled, worker_lag

SEED = 28


STEPS = 90


def test_a_random_history_on_both_sides_converges_with_nothing_lost_or_back(stack: Stack) -> None:
    def kill_worker() -> None:
        pid = stack.worker.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        eventually(lambda: stack.worker.pid() is None, 30, "the worker is gone")
        stack.worker.start()

    def wait(what: str) -> None:
        settled(stack.settings, Topics(stack.settings.tenant).all())
        eventually(lambda: worker_lag(stack.settings) == 0, 180, what, every=0.5)

    outcome = run_history(stack.settings, SEED, STEPS, kill_worker, wait, print)
    assert outcome.counts["pairs"] > 4 and outcome.writes > STEPS
    assert outcome.ok, "\n".join(outcome.problems)
