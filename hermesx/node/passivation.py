"""Passivation: an atom leaves memory and becomes dormant at its storesite (docs/DESIGN.md §6).

An atom is passivated when a client asks (the Passivate RPC) or when it has
been idle for its ``idle_passivate_seconds``. The node freezes it, hands its
state to the storesite, and drops it; the next call to it has the storesite
activate it again on some node.
"""

from __future__ import annotations

import logging

from hermesx.core.errors import HermesError
from hermesx.core.identity import TAD
from hermesx.node.catalog import ActiveAtom
from hermesx.node.context import NodeContext

__all__ = ["Passivation"]

log = logging.getLogger(__name__)


class Passivation:
    """Passivation of the atoms of one node."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx

    def passivate(self, active: ActiveAtom) -> TAD:
        snapshot = active.freeze(wait=30.0)
        try:
            self._ctx.storesites.passivated(
                active.guid, active.tad, snapshot, generation=active.frozen_generation
            )
        except HermesError:
            active.thaw()
            raise
        self._ctx.storesites.ship_logs(active.guid)
        self._ctx.catalog.drop(active, None)
        log.info("atom %s passivated", active.guid)
        return active.tad

    @staticmethod
    def idle_due(active: ActiveAtom, now: float) -> bool:
        """Whether ``active`` has been idle for its ``idle_passivate_seconds``."""
        idle = active.meta.idle_passivate_seconds
        return idle > 0 and active.inflight == 0 and now - active.last_used >= idle
