"""Warnings a peer can make a process write, bounded in rate (docs/DESIGN.md §10).

A process writes one warning line for each call connection it closes or
refuses and each request it refuses for its caller's role, so that an
operator sees who misbehaves. Any host that reaches the port, with no
certificate at all, could make it write one such line per TCP connection
(about 700 a second from one thread of a plain loop) and so grow its log
without end. :class:`Throttle`, a :class:`logging.Filter` on the logger of
such warnings, lets at most ``lines`` records of one message (its format
string) through in each ``seconds``; those past it are dropped and counted,
and the next record let through says how many went unwritten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Throttle"]

# Message formats counted at most (the loggers' own, a few dozen; cleared past it).
_MAX_FORMATS = 1024


class Throttle(logging.Filter):
    """At most ``lines`` warnings (and worse) of each message format per ``seconds``."""

    def __init__(
        self,
        lines: int = 100,
        seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.lines = lines
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        # format -> [window's start, records let through in it, records dropped since]
        self._windows: dict[str, list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # what the process does itself (a certificate issued), not a peer
        key = str(record.msg)
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.seconds:
                if window is None and len(self._windows) >= _MAX_FORMATS:
                    self._windows.clear()
                dropped = int(window[2]) if window is not None else 0
                self._windows[key] = [now, 1, 0]
            elif window[1] < self.lines:
                window[1] += 1
                dropped = 0
            else:
                window[2] += 1
                return False
        if dropped:
            # Not a format of its own: the record's arguments fill record.msg's.
            record.msg = f"{record.msg} [{dropped} more like it not written]"
        return True
