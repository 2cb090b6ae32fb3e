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
from typing import Any

__all__ = ["AtomLocks"]


class AtomLocks:
    """A lock per GUID, made on first use and forgotten once nobody holds or awaits it:
    any role may ask about any GUID (Locate), so a table that kept each one would grow
    with every made-up GUID sent (docs/DESIGN.md §10)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        # GUID -> [its lock, how many hold or await it]
        self._locks: dict[str, list[Any]] = {}

    @contextmanager
    def hold(self, guid: str) -> Iterator[None]:
        with self._guard:
            entry = self._locks.get(guid)
            if entry is None:
                entry = self._locks[guid] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[guid]

    def __len__(self) -> int:
        """GUIDs whose lock someone holds or awaits."""
        return len(self._locks)
