"""Where an atom runs: is its holder live, and placing it on a node (docs/DESIGN.md §5, §6).

:class:`Activator` answers two questions for the storesite. Is the node
incarnation recorded as holding an atom still the live one (ZooKeeper, read
fresh, must list another incarnation or none before an atom counts as gone;
a record of an older store names no incarnation, so the live node is asked)?
And if not, or the atom is dormant, on which live node does it run now: the
nodes that fit the atom's tags are tried best first (:mod:`storesite.placement`),
each given a fresh age reserved durably before it is asked, the copy staged
there serving only once its TAD is recorded here.
"""

from __future__ import annotations

import logging
import time

from hermesx.core.errors import CallTimeoutError, HermesError, UnreachableError
from hermesx.core.identity import TAD
from hermesx.rpc.node_client import NodeClient
from storesite.directory import Directory
from storesite.placement import LoadCache, rank_nodes
from storesite.records import AtomState
from storesite.store import AtomStore

__all__ = ["DORMANT", "Activator"]

log = logging.getLogger(__name__)

# The reason of an activation of a dormant atom; any other is a recovery.
DORMANT = "dormant"


class Activator:
    """Tells whether an atom's holder is live, and activates the atom on a live node."""

    def __init__(
        self, store: AtomStore, directory: Directory, supervisors: NodeClient, loads: LoadCache
    ) -> None:
        self.store = store
        self.directory = directory
        self.supervisors = supervisors
        self.loads = loads

    def holder(self, state: AtomState) -> AtomState | None:
        """``state`` (its incarnation filled in) when its node incarnation is live, else None.

        Gone means ZooKeeper, read fresh, lists another incarnation of the
        node or none: never while the recorded session may still serve.
        Raises when that cannot be told now. Caller holds the atom lock.
        """
        node = state.location.node
        member = self.directory.nodes().get(node)
        if member is not None and state.incarnation and member.incarnation == state.incarnation:
            return state
        live = self.directory.live_incarnation(node)
        if live is None:
            return None
        if state.incarnation:
            return state if live == state.incarnation else None
        # A record of an older store: ask the live node whether it holds the atom.
        if member is None or member.incarnation != live:
            raise UnreachableError(
                f"atom {state.guid}: node {node} is registering again; its holding is not known yet"
            )
        held, reported = self.supervisors.holding(member, state.guid)
        if reported != live:
            raise UnreachableError(
                f"atom {state.guid}: node {node} answered as incarnation {reported or '?'}, "
                f"not its live {live}"
            )
        if held != state.location:
            return None
        log.info("atom %s: node %s holds it as incarnation %s", state.guid, node, live)
        return self.store.set_incarnation(state.guid, state.location, live)

    def place(self, state: AtomState, reason: str) -> AtomState:
        """Activate ``state``'s atom on the best live node; its new record.

        Caller holds the atom lock, and looks again at the new holder once
        recorded (it may have gone meanwhile).
        """
        guid = state.guid
        meta = state.meta
        started = time.monotonic()
        nodes = self.directory.nodes()
        fitting = rank_nodes(nodes, meta.tags, {})
        candidates = rank_nodes(nodes, meta.tags, self.loads.loads(fitting))
        last: HermesError | None = None
        for member in candidates:
            age, checkpoint = self.store.reserve_age(guid)
            tad = TAD(member.name, age)
            try:
                _, incarnation = self.supervisors.activate(
                    member,
                    guid,
                    tad,
                    checkpoint.snapshot,
                    meta,
                    checksum=checkpoint.checksum,
                    stage=True,
                    # A recovered atom is staged even on a full node: never stranded.
                    recovery=reason != DORMANT,
                )
            except CallTimeoutError as err:
                # The node may still stage the copy, late; it serves only if
                # this record names its TAD, and it never will: try another.
                log.warning(
                    "node %s did not stage atom %s (%s) in time: %s", member.name, guid, tad, err
                )
                self.loads.forget(member.name)
                last = err
                continue
            except HermesError as err:
                log.warning("node %s refused atom %s (%s): %s", member.name, guid, tad, err)
                self.loads.forget(member.name)
                last = err
                continue
            # Durable before the copy serves: only the TAD recorded here ever serves.
            placed = self.store.activated(guid, tad, incarnation)
            self.loads.bump(member.name)
            try:
                self.supervisors.confirm(member, guid, tad, incarnation)
            except HermesError as err:
                # The staged copy asks this storesite after a while (or at its
                # first call) and finds its TAD recorded here.
                log.warning(
                    "node %s did not hear that atom %s is at %s: %s", member.name, guid, tad, err
                )
            log.info(
                "activated atom %s on %s (%s) in %.1f ms",
                guid,
                tad,
                reason,
                (time.monotonic() - started) * 1000,
            )
            return placed
        self.store.mark_dormant(guid)
        tags = f" with tags {sorted(meta.tags)}" if meta.tags else ""
        if last is None:
            raise UnreachableError(f"atom {guid} is {reason} and no live node{tags} can take it")
        raise UnreachableError(f"atom {guid} is {reason} and no live node{tags} took it: {last}")
