"""Calls for an atom on its way to this node: wait for it, never forward back (docs/DESIGN.md §4).

A move's destination holds a staged copy from the transfer until the source
tells it to activate (docs/DESIGN.md §5). Its stash may still name a place
the atom had before (it knew the atom then), so a call reaching it in that
moment — often forwarded by the source itself, which already points here —
would go back along the stale stash, be forwarded here again, and bounce
until the hop limit. TADs are ordered by age: a node that holds a TAD of the
atom newer than its stash's (a staged copy, or the TAD a forwarding node sent
the call along, ``InvokeRequest.tad``) knows the stash is behind, and the
call waits here for the copy to serve, bounded by the call's deadline.

A forwarding node's word only makes a call wait, never makes a copy serve: a
staged copy serves when its source activates it, or when the storesite's
record names it (:meth:`MigrationDestination.resolve_staged`, asked after
``ASK_STORESITE_AFTER_S``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hermesx.core.errors import CallTimeoutError, HermesError, UnreachableError
from hermesx.core.identity import TAD
from hermesx.node.catalog import ActiveAtom, Catalog
from hermesx.routing.stash import Stash

__all__ = ["ARRIVAL_GRACE_S", "ASK_STORESITE_AFTER_S", "Arrivals"]

# Neither a staged copy nor the atom here, for a call waiting for it: how long until
# it counts as not coming (a copy being taken from staged to serving is neither for
# a moment). Then a call sent here along a TAD newer than our stash finds the chain
# broken (the atom left this node's incarnation for good); any other goes on by the
# stash (the move aborted).
ARRIVAL_GRACE_S = 0.05
# A staged copy that did not serve within this: ask the storesite whether its move
# committed (the source may have died after COMMIT), once per waiting call.
ASK_STORESITE_AFTER_S = 0.2


class Arrivals:
    """The atoms on their way to node ``node``, and the calls waiting for them."""

    def __init__(
        self, node: str, catalog: Catalog, stash: Stash, resolve_staged: Callable[[str], bool]
    ) -> None:
        self._node = node
        self._catalog = catalog
        self._stash = stash
        self._resolve_staged = resolve_staged

    def expected(self, guid: str, sent: TAD | None, held: TAD | None) -> TAD | None:
        """The newest TAD at which ``guid`` is on its way here and which is newer than the
        stash's ``held``: its staged copy's, or ``sent``, the TAD a forwarding node sent
        the call along, when it names this node. None when there is none."""
        floor = held.age if held is not None else -1
        newest = None
        staged = self._catalog.staged.get(guid)
        if staged is not None and staged.tad.age > floor:
            newest = staged.tad
        if (
            sent is not None
            and sent.node == self._node
            and sent.age > floor
            and (newest is None or sent.age > newest.age)
        ):
            newest = sent
        return newest

    def wait(
        self, guid: str, expected: TAD, sent: TAD | None, timeout: float
    ) -> ActiveAtom | HermesError | None:
        """Wait up to ``timeout`` seconds for ``guid``, expected here at ``expected``.

        The atom serving here: returned. None: go on by the stash — it names a TAD at
        least as new (the atom came and left), or the staged copy waited for was dropped
        (its move aborted) and no forwarding node said the atom is here. Otherwise the
        error to answer: ``unreachable`` when a node sent the call here along a TAD this
        node holds no copy of (the chain is broken: the caller asks the storesite),
        ``timeout`` when the copy did not serve in time.
        """
        catalog = self._catalog
        start = time.monotonic()
        deadline = start + timeout
        ask_at: float | None = start + ASK_STORESITE_AFTER_S  # None: asked
        missing_since: float | None = None  # neither staged nor serving here since
        while True:
            seen = catalog.changes
            active = catalog.atoms.get(guid)
            if active is not None and active.state != "gone":
                return active
            held = self._stash.get(guid)
            if held is not None and held.age >= expected.age and held.node != self._node:
                return None
            now = time.monotonic()
            if catalog.staged.get(guid) is None:
                # Between a staged copy taken and the atom serving, neither is here: a
                # moment's grace before believing it will not come.
                if missing_since is None:
                    missing_since = now
                if now - missing_since >= ARRIVAL_GRACE_S or now >= deadline:
                    if self.expected(guid, sent, held) is None:
                        return None  # its move aborted: go on by the stash
                    return UnreachableError(
                        f"node {self._node} holds no copy of atom {guid} for {sent}, "
                        f"which it was sent along (its stash: {held})"
                    )
                wake = missing_since + ARRIVAL_GRACE_S
            elif now >= deadline:
                return CallTimeoutError(
                    f"atom {guid} is on its way to node {self._node} ({expected}) and did "
                    f"not serve there within the call's deadline"
                )
            else:
                missing_since = None
                if ask_at is not None and now >= ask_at:
                    ask_at = None  # once: the storesite says whether its move committed
                    if self._resolve_staged(guid):
                        continue
                wake = deadline if ask_at is None else ask_at
            catalog.wait_change(seen, min(wake, deadline) - now)
