"""Repeats (operations): a warning that every batch would raise again, said once in a while.

A mapping fallback (a seller with no CRM user, say) stays true until someone edits the
configuration, and every file that crosses meanwhile meets it again: logged each time, it buried
the log (at 500 files a second, two lines each) and took the worker's event loop about a twentieth
of its time. The counter (`ofisync_mapping_fallbacks_total`) and the dashboard's list of
unmapped values count every one; the log says a reason the first time it is met, then at most
once every `every_s`, with how often it recurred since it was last said.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

FALLBACK_REPEAT_S = 600.0


class Repeats:
    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._said_at: dict[Hashable, float] = {}
        self._unsaid: dict[Hashable, int] = {}

    def due(self, what: Hashable, times: int = 1) -> int | None:
        """Notes that `what` happened `times` more times; how many times it happened since it
        was last said (these included) when it is to be said now, else None."""
        now = self.clock()
        unsaid = self._unsaid.get(what, 0) + times
        said_at = self._said_at.get(what)
        if said_at is not None and now - said_at < self.every_s:
            self._unsaid[what] = unsaid
            return None
        self._said_at[what] = now
        self._unsaid[what] = 0
        return unsaid
