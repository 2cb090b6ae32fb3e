"""The node's background duties, every HOUSEKEEPING_INTERVAL_S (DESIGN.md §5, §6).

While the node is not fenced: aborts of moves the storesite has not heard
are sent again, staged copies left alone are settled, and each active atom
gets its time-based duties: a periodic checkpoint when due, passivation
when it has been idle long enough.
"""

from __future__ import annotations

import logging
import threading
import time

from hermesx.core.errors import HermesError
from hermesx.node.aborts import UnsentAborts
from hermesx.node.catalog import ActiveAtom, Catalog
from hermesx.node.checkpoints import Checkpointing
from hermesx.node.fencing import Fencing
from hermesx.node.migration_destination import MigrationDestination
from hermesx.node.passivation import Passivation

__all__ = ["HOUSEKEEPING_INTERVAL_S", "Housekeeping"]

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 0.2


class Housekeeping:
    """A thread doing the node's background duties until ``stopping`` is set."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        fencing: Fencing,
        aborts: UnsentAborts,
        destination: MigrationDestination,
        checkpoints: Checkpointing,
        passivation: Passivation,
        stopping: threading.Event,
    ) -> None:
        self._catalog = catalog
        self._fencing = fencing
        self._aborts = aborts
        self._destination = destination
        self._checkpoints = checkpoints
        self._passivation = passivation
        self._stopping = stopping

    def start(self) -> None:
        threading.Thread(target=self._run, name="node-housekeeping", daemon=True).start()

    def _run(self) -> None:
        while not self._stopping.wait(HOUSEKEEPING_INTERVAL_S):
            now = time.monotonic()
            if self._aborts and not self._fencing.fenced:
                self._aborts.retry()
            self._destination.settle_stale(now)
            for active in list(self._catalog.atoms.values()):
                try:
                    self._atom_duties(active, now)
                except HermesError as exc:
                    log.warning("atom %s: background duty failed: %s", active.guid, exc)

    def _atom_duties(self, active: ActiveAtom, now: float) -> None:
        if self._fencing.fenced or active.state != "active":
            return
        if self._checkpoints.periodic_due(active, now):
            self._checkpoints.checkpoint(active, periodic=True)
        if self._passivation.idle_due(active, now):
            self._passivation.passivate(active)
