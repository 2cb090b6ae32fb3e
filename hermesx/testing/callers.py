"""A caller in the background: proves that what a test does to a node costs no one else a call.

Attack and bad-input tests run one while they abuse a node's listener; at
the end every call it made must have succeeded, and it must still be making
calls (the node serves on).
"""

from __future__ import annotations

import contextlib
import threading

from hermesx.client import Client
from hermesx.core.errors import HermesError
from hermesx.testing.wait import wait_until

__all__ = ["BackgroundCaller"]


class BackgroundCaller:
    """Calls ``incr(1)`` on a counter atom in a loop until stopped; keeps every failure.

    Entered, it returns after the first calls succeeded; on exit it waits (at
    most 30 s) for a few more calls or a failure, then stops.
    """

    def __init__(self, client: Client, name: str) -> None:
        self._atom = client.atom(name)
        self._stop = threading.Event()
        self.calls = 0
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name=f"caller-{name}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._atom.incr(1)
                self.calls += 1
            except HermesError as exc:
                self.failures.append(f"{exc.kind}: {exc}")
            self._stop.wait(0.02)

    def wait_more(self, calls: int = 3, timeout: float = 30.0) -> None:
        """Wait until ``calls`` more calls succeeded (or one failed): the node still serves."""
        after = self.calls + calls
        wait_until(lambda: self.calls >= after or self.failures, timeout, "more calls")

    def __enter__(self) -> BackgroundCaller:
        self._thread.start()
        wait_until(lambda: self.calls >= 3, 30.0, "the background caller's first calls")
        return self

    def __exit__(self, *exc: object) -> None:
        # A few more calls after whatever the test did; the test judges the count.
        with contextlib.suppress(AssertionError):
            self.wait_more()
        self._stop.set()
        self._thread.join(30.0)
