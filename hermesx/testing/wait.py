"""The one way a test waits: poll a condition until it holds or a deadline passes.

Tests never sleep to let something happen; they name the condition they
wait for and :func:`wait_until` polls it, so a fast machine does not wait
longer than needed and a slow one fails with a message that says what never
happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 30.0, what: str = "", *, every: float = 0.025
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Raises AssertionError naming ``what`` when ``timeout`` seconds pass first.
    The predicate is tried once more at the deadline, so a slow poll cannot
    lose the last chance.
    """
    deadline = time.monotonic() + timeout
    while True:
        last_try = time.monotonic() >= deadline
        value = predicate()
        if value:
            return value
        if last_try:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what or _name(predicate)}"
            )
        time.sleep(min(every, max(deadline - time.monotonic(), 0.0)))


def _name(predicate: Callable[[], object]) -> str:
    return getattr(predicate, "__qualname__", repr(predicate))
