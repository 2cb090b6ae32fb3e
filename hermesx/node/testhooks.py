"""Test-only hooks of a node, on only with ``--test-hooks`` (docs/DESIGN.md §8).

Fault tests pause a node at a named step (of a move, a checkpoint, a staged
activation) to kill something in the window, and place a stash entry — which
relocates an atom held here without its storesite's consent, through the same
``ActivateCopy`` a move uses — to build forwarding chains and loops. Both RPCs
(``TestHook``, ``StashPut``) are in the ``NodeTestHooks`` service, which a node
serves only when started with test hooks on.
"""

from __future__ import annotations

import logging
import threading
import time

from hermesx.core.errors import ConfigurationError, HermesError
from hermesx.core.identity import TAD
from hermesx.node.catalog import ActiveAtom, Catalog
from hermesx.node.config import NodeConfig
from hermesx.routing.invoker import Invoker
from hermesx.rpc.convert import tad_from_pb, tad_to_pb
from hermesx.rpc.proto import hermesx_pb2 as pb

__all__ = ["PAUSE_STEPS", "TestHooks"]

log = logging.getLogger(__name__)

# Where a test may pause this node, once.
PAUSE_STEPS = (
    "prepared",
    "transferred",
    "committed",
    "dropped",
    "checkpoint-snapshot",
    "activate-stage",
    "resolve-staged",
)


# How soon a paused step sees the node stopping (a release is seen at once).
RELEASE_POLL_S = 0.1


class TestHooks:
    """The pauses a test asked for, and the test-only stash placement."""

    def __init__(
        self,
        config: NodeConfig,
        catalog: Catalog,
        invoker: Invoker,
        *,
        stopping: threading.Event,
    ) -> None:
        self._node = config.name
        self._catalog = catalog
        self._invoker = invoker
        self._stopping = stopping
        # Step of the next migration -> seconds to pause there.
        self._pauses: dict[str, float] = {}
        # Step -> the event that ends the pause in progress there early.
        self._released: dict[str, threading.Event] = {}

    def pause(self, step: str) -> None:
        """Pause here if a test asked to (once per request), until the time is up, the
        test ends the pause (``TestHook`` with 0 seconds) or the node stops."""
        seconds = self._pauses.pop(step, 0.0)
        if seconds <= 0:
            return
        log.warning("test hook: paused at %s for %.1f s", step, seconds)
        released = self._released[step] = threading.Event()
        deadline = time.monotonic() + seconds
        try:
            while not (released.is_set() or self._stopping.is_set()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                released.wait(min(left, RELEASE_POLL_S))
        finally:
            if self._released.get(step) is released:
                del self._released[step]

    def set_pause(self, request: pb.TestHookRequest) -> None:
        """The TestHook RPC: pause at ``request.pause_at`` for ``request.seconds``, once;
        0 seconds ends a pause in progress there (a test that saw what it waited for)."""
        if request.pause_at not in PAUSE_STEPS:
            raise ConfigurationError(f"unknown pause step {request.pause_at!r}")
        self._pauses[request.pause_at] = request.seconds
        if request.seconds <= 0:
            released = self._released.get(request.pause_at)
            if released is not None:
                released.set()

    def stash_tad(self, request: pb.StashPutRequest) -> TAD:
        """The TAD a StashPut RPC places; refused without a TAD."""
        tad = tad_from_pb(request.tad)
        if tad is None:
            raise HermesError("StashPut needs a TAD")
        return tad

    def stash_put(self, guid: str, tad: TAD) -> None:
        """Place ``tad`` in the stash for ``guid``; an atom held here goes to ``tad``."""
        active = self._catalog.atoms.get(guid)
        if active is not None and tad.node != self._node:
            self._relocate(active, tad)
        self._invoker.stash.force(guid, tad)

    def _relocate(self, active: ActiveAtom, tad: TAD) -> None:
        """Test-only relocation: the atom goes to tad.node through the same ActivateCopy
        path a migration uses, without the storesite's consent."""
        snapshot = active.freeze(wait=10.0)
        copy = pb.CopyRequest(
            guid=active.guid,
            tad=tad_to_pb(tad),
            snapshot=snapshot,
            meta=active.meta,
            source=self._node,
        )
        try:
            self._invoker.nodes.activate_copy(self._invoker.node(tad.node), copy)
        except HermesError:
            active.thaw()
            raise
        self._catalog.drop(active, tad)
