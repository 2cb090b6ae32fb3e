"""A node's check that it can still serve (docs/DESIGN.md §4 "Deadlines are absolute", §6).

A node whose workers are all stuck answers nothing, yet its name-service
session stays alive (a separate thread keeps it), so no storesite recovers its
atoms: they are held hostage. :class:`ServeWatchdog` asks the node's own
server a cheap question (``Status``) every ``interval_s``; when no answer came
for ``limit_s`` it calls ``on_stuck`` once, and the node gives up its session.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

__all__ = ["ServeWatchdog"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ServeWatchdog:
    """Calls ``on_stuck(reason)`` once ``probe`` has failed for ``limit_s`` in a row,
    checking every ``interval_s`` until ``stopping`` is set."""

    _probe: Callable[[float], None]
    _limit_s: float
    _on_stuck: Callable[[str], None]
    _: KW_ONLY
    stopping: threading.Event
    interval_s: float = 1.0

    def start(self) -> None:
        threading.Thread(target=self._run, name="node-watchdog", daemon=True).start()

    def _run(self) -> None:
        last_answer = time.monotonic()
        while not self.stopping.wait(self.interval_s):
            # A probe slower than the limit counts as no answer.
            timeout = max(self.interval_s, min(5.0, self._limit_s / 2))
            try:
                self._probe(timeout)
            except Exception as exc:
                silent = time.monotonic() - last_answer
                log.warning("node did not answer its own Status for %.1f s: %s", silent, exc)
                if silent >= self._limit_s and not self.stopping.is_set():
                    self._on_stuck(
                        f"it answered no call for {silent:.1f} s (limit {self._limit_s:g} s): "
                        "every worker is stuck"
                    )
                    return
                continue
            last_answer = time.monotonic()
