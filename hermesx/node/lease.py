"""A node's serving lease on its name-service session (docs/DESIGN.md §6 "Fencing").

kazoo reports a lost session only after it has talked to the server again. A
node paused (SIGSTOP, a swapped-out VM) for longer than its session timeout
resumes believing it is alive, and for a few milliseconds would serve calls and
install atoms that sat in its socket — while a storesite, having seen the
session expire, already recovered those atoms elsewhere. Two copies would
serve.

:class:`SessionLease` closes that window by time alone. A ZooKeeper request
answered on our session proves the server heard the session after the moment
the request was *started*, so the server cannot expire the session before
that start plus the session timeout. The node may serve only until a safe
fraction of that: ``time.monotonic`` keeps running while the process is
stopped, so a resumed node finds its lease run out before it does anything.
A background thread renews the lease every ``session_timeout / 5``; a check
that finds it run out tries one round trip at once (a busy machine may have
delayed the renewer) and refuses when that fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["LEASE_FRACTION", "SessionLease"]

log = logging.getLogger(__name__)

# Of the session timeout, the part after a proven round trip in which we serve:
# the rest covers clock-rate differences and the storesite's reaction time.
LEASE_FRACTION = 2.0 / 3.0


class SessionLease:
    """Tells whether the node may serve as incarnation ``incarnation()`` right now.

    ``round_trip(timeout)`` does one request on the session and returns that
    session's id (hex) when answered, else None. ``incarnation()`` is the
    session the node's atoms belong to ("" when none): a round trip on any
    other session (kazoo made a new one after the old expired) renews nothing.
    """

    def __init__(
        self,
        round_trip: Callable[[float], str | None],
        incarnation: Callable[[], str],
        session_timeout: float,
        *,
        stopping: threading.Event,
        fraction: float = LEASE_FRACTION,
    ) -> None:
        self._round_trip = round_trip
        self._incarnation = incarnation
        self._length = session_timeout * fraction
        self._interval = session_timeout / 5.0
        self._stopping = stopping
        self._lock = threading.Lock()
        # Start of the newest answered round trip, and the session it proved.
        self._since = float("-inf")
        self._session = ""
        self._renewing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="node-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def remaining(self) -> float:
        """Seconds the lease still runs for the current incarnation (<= 0: run out)."""
        incarnation = self._incarnation()
        with self._lock:
            if not incarnation or self._session != incarnation:
                return 0.0
            return self._since + self._length - time.monotonic()

    def valid(self) -> bool:
        """True while we may serve; tries one renewal at once when the lease ran out."""
        if self.remaining() > 0:
            return True
        self.renew(min(self._interval, self._length / 2))
        return self.remaining() > 0

    def renew(self, timeout: float) -> bool:
        """One round trip; True when it extended the lease."""
        if not self._renewing.acquire(timeout=timeout):
            return False  # another renewal is under way; its result counts for us too
        try:
            started = time.monotonic()
            session = self._round_trip(timeout)
            if session is None:
                return False
            with self._lock:
                if session != self._session or started > self._since:
                    self._session, self._since = session, started
            return True
        finally:
            self._renewing.release()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            was = self.remaining() > 0
            renewed = self.renew(self._interval)
            if was and not renewed and self.remaining() <= 0:
                log.warning("serving lease ran out: no name-service round trip answered")
