"""Passivation: an atom leaves memory and becomes dormant at its storesite (docs/DESIGN.md §6).

An atom is passivated when a client asks (the Passivate RPC) or when it has
been idle for its ``idle_passivate_seconds``. The node freezes it, hands its
state to the storesite, and drops it; the next call to it has the storesite
activate it again on some node.

A final checkpoint may be written while its answer is lost (a timeout, a
broken connection). Thawing the atom then would serve it here while the
storesite's record says dormant, and the next caller that asks the
storesite would have it activated on another node: two copies. So an
outcome that is not known leaves the atom frozen, and the final checkpoint
is sent again (the storesite takes it again from the same TAD) until the
storesite answers: written, the atom is dropped; refused because the record
is past this TAD (a caller had the dormant atom activated elsewhere), it is
dropped too; refused otherwise, it thaws. A retry never sent (no storesite
registered now) is no answer: the first may be written.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from hermesx.core.errors import (
    CommunicationError,
    HermesError,
    MigrationError,
    NotAuthorizedError,
)
from hermesx.core.identity import TAD
from hermesx.node.catalog import ActiveAtom
from hermesx.node.context import NodeContext
from hermesx.routing.peers import StoresiteAbsentError

__all__ = ["Passivation"]

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.2  # a final checkpoint whose outcome is unknown is sent again after this,
LAST_RETRY_S = 5.0  # then twice as long each time, up to this


@dataclass
class _Unsettled:
    """A frozen atom whose final checkpoint's outcome is not known yet."""

    active: ActiveAtom
    snapshot: bytes
    due: float
    pause: float = FIRST_RETRY_S


def _outcome_unknown(exc: HermesError) -> bool:
    """Whether the storesite may have written what failed (no answer, or a lost one);
    not when nothing was sent (no storesite registered) or the answer was a refusal."""
    if isinstance(exc, (NotAuthorizedError, StoresiteAbsentError)):
        return False
    return isinstance(exc, CommunicationError)


class Passivation:
    """Passivation of the atoms of one node."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._unsettled: dict[str, _Unsettled] = {}

    def passivate(self, active: ActiveAtom) -> TAD:
        snapshot = active.freeze(wait=30.0)
        try:
            self._send(active, snapshot)
        except HermesError as exc:
            if not _outcome_unknown(exc):
                active.thaw()
                raise
            with self._lock:
                due = time.monotonic() + FIRST_RETRY_S
                self._unsettled[active.guid] = _Unsettled(active, snapshot, due)
            log.warning(
                "atom %s: passivation's outcome not known (%s); asking again", active.guid, exc
            )
            raise
        self._passivated(active)
        return active.tad

    def settle(self, now: float) -> None:
        """Send again the final checkpoints whose outcome is not known (from housekeeping)."""
        with self._lock:
            due = [u for u in self._unsettled.values() if u.due <= now]
        for unsettled in due:
            active = unsettled.active
            if self._ctx.catalog.atoms.get(active.guid) is not active:
                self._forget(unsettled)  # dropped meanwhile (the node lost its session)
                continue
            try:
                self._send(active, unsettled.snapshot)
            except HermesError as exc:
                # A retry never sent (no storesite registered now) says nothing of the
                # first, which may be written: still unknown.
                if _outcome_unknown(exc) or isinstance(exc, StoresiteAbsentError):
                    unsettled.pause = min(unsettled.pause * 2, LAST_RETRY_S)
                    unsettled.due = time.monotonic() + unsettled.pause
                    continue
                self._forget(unsettled)
                if isinstance(exc, MigrationError):
                    # The record is past this copy: the first one was written and a
                    # caller has had the dormant atom activated elsewhere since.
                    log.info("atom %s: passivated, and active elsewhere since", active.guid)
                    self._ctx.catalog.drop(active, None)
                    continue
                log.warning("atom %s: passivation refused (%s); it serves again", active.guid, exc)
                active.thaw()
                continue
            self._forget(unsettled)
            self._passivated(active)

    def _send(self, active: ActiveAtom, snapshot: bytes) -> None:
        self._ctx.storesites.passivated(
            active.guid, active.tad, snapshot, generation=active.frozen_generation
        )

    def _forget(self, unsettled: _Unsettled) -> None:
        with self._lock:
            if self._unsettled.get(unsettled.active.guid) is unsettled:
                del self._unsettled[unsettled.active.guid]

    def _passivated(self, active: ActiveAtom) -> None:
        self._ctx.storesites.ship_logs(active.guid)
        self._ctx.catalog.drop(active, None)
        log.info("atom %s passivated", active.guid)

    @staticmethod
    def idle_due(active: ActiveAtom, now: float) -> bool:
        """Whether ``active`` has been idle for its ``idle_passivate_seconds``."""
        idle = active.meta.idle_passivate_seconds
        return idle > 0 and active.inflight == 0 and now - active.last_used >= idle
