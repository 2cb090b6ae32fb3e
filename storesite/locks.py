"""One lock per atom, so the storesite's steps on one atom never interleave (docs/DESIGN.md §5, §6).

Every operation that changes an atom's records, or talks to nodes about it,
holds that atom's lock: two Locates of a dormant atom activate it once, a
recovery and a commit never interleave, a move home sees no checkpoint slip
past it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["AtomLocks"]


class AtomLocks:
    """A lock per GUID, made on first use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def hold(self, guid: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(guid, threading.Lock())
        with lock:
            yield

    def drop(self, guid: str) -> None:
        """Forget the lock of an atom whose records are gone."""
        with self._guard:
            self._locks.pop(guid, None)
