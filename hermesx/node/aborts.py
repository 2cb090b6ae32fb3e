"""Aborts of moves that the storesite did not hear, retried until it does (docs/DESIGN.md §5).

A move aborted before COMMIT must be aborted at the atom's storesite too:
until the storesite hears it, it holds the move open and refuses the atom's
checkpoints. When the storesite was down at the abort, the node keeps the
abort here and retries it from its housekeeping, and at once when a
checkpoint is refused for it.
"""

from __future__ import annotations

import logging

from hermesx.core.errors import HermesError
from hermesx.node.storage import AtomStoresites

__all__ = ["UnsentAborts"]

log = logging.getLogger(__name__)


class UnsentAborts:
    """GUID -> the age of the aborted move the storesite has not heard about."""

    def __init__(self, storesites: AtomStoresites) -> None:
        self._storesites = storesites
        self._ages: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._ages)

    def __contains__(self, guid: str) -> bool:
        return guid in self._ages

    def abort(self, guid: str, age: int) -> None:
        """Abort the move of ``guid`` to ``age`` at its storesite, or keep it to retry."""
        try:
            self._storesites.abort(guid, age, 5.0)
        except HermesError as exc:
            # Until it hears this, the storesite refuses our checkpoints.
            log.warning("atom %s: abort not heard by the storesite (%s); will retry", guid, exc)
            self._ages[guid] = age

    def retry(self) -> None:
        for guid, age in list(self._ages.items()):
            try:
                self._storesites.abort(guid, age, 2.0)
            except HermesError:
                continue
            if self._ages.get(guid) == age:
                del self._ages[guid]
            log.info("atom %s: the storesite heard the abort of the move at age %d", guid, age)
