"""The storesite's behaviour: location, activation, recovery, moving home.

See docs/DESIGN.md §4, §5, §6.

:class:`Storesite` joins the durable records (:mod:`storesite.store`), the
cluster's membership (a :class:`Directory`, normally the name service) and
the supervisors (:class:`~hermesx.rpc.node_client.NodeClient`). The gRPC
servicer in :mod:`storesite.server` is a thin layer over it.

Everything that changes one atom's records runs under that atom's lock
(:mod:`storesite.locks`), so two concurrent Locates of a dormant atom
activate it once, a recovery and a commit never interleave, and a move home
sees no checkpoint slip past it. Whether a holder is live and where an atom
is placed is :mod:`storesite.activation`; recovery after a node incarnation
ends is :mod:`storesite.recovery`.

Incarnations (§5): a location names the node *incarnation* that holds the
atom — the ZooKeeper session owning the node's registration, which the node
reports when it activates, stages or creates an atom. A node restarted under
the same name and address is another incarnation, so atoms recorded at the
old one are recovered exactly as after an expiry, whether this storesite saw
the restart or was down meanwhile (at start every record is checked against
the live incarnations, and every Locate checks the one it answers with). An
incarnation counts as gone only when ZooKeeper, read fresh, lists another one
or none: while the old session lives, its node keeps its atoms. A COMMIT
must name the destination incarnation that staged the copy and is refused
when that is not the live one. Records of older stores name no incarnation;
the live node is asked whether it holds the atom.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import replace

from hermesx.core.errors import MigrationError, StorageError
from hermesx.core.identity import TAD
from hermesx.observe import metrics
from hermesx.rpc.node_client import NodeClient
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.storesite_client import CheckpointInfo, StoredLocation, StoresiteClient
from storesite.activation import DORMANT, Activator
from storesite.deltas import DeltaOutcome, put_delta
from storesite.directory import Directory
from storesite.locks import AtomLocks
from storesite.placement import LoadCache, Member
from storesite.records import UNSTATED, AtomState, Checkpoint, Provenance, StoreStatus
from storesite.recovery import Recovery, gone
from storesite.store import AtomStore

__all__ = ["Storesite"]

log = logging.getLogger(__name__)


class Storesite:
    """One storesite's logic over its store, its directory and the nodes."""

    def __init__(
        self,
        store: AtomStore,
        directory: Directory,
        *,
        supervisors: NodeClient | None = None,
        recovery_workers: int = 8,
        load_ttl: float = 1.0,
    ) -> None:
        self.store = store
        self.directory = directory
        self.supervisors = supervisors or NodeClient()
        self._loads = LoadCache(self.supervisors.active_atoms, ttl=load_ttl)
        self._locks = AtomLocks()
        self._activator = Activator(store, directory, self.supervisors, self._loads)
        self._recovery = Recovery(
            store, directory, self._locks, self._activator, workers=recovery_workers
        )

    @property
    def sid(self) -> str:
        return self.store.sid

    def close(self) -> None:
        self._recovery.close()
        self.supervisors.close()

    def on_nodes(self, members: Mapping[str, Member]) -> None:
        """Name-service watch callback: the full set of live nodes after a change."""
        self._recovery.on_nodes(members)

    # ------------------------------------------------------ plain records

    def put_module(self, module: bytes) -> str:
        return self.store.modules.put(module)

    def get_module(self, module_hash: str) -> bytes:
        return self.store.modules.get(module_hash)

    def register_atom(
        self, guid: str, meta: pb.AtomMeta, tad: TAD, snapshot: bytes, check: Provenance = UNSTATED
    ) -> StoredLocation:
        if not check.incarnation:
            # A creator that does not say: the incarnation its node is listed with.
            member = self.directory.nodes().get(tad.node)
            check = replace(check, incarnation=member.incarnation if member is not None else "")
        with self._locks.hold(guid):
            state = self.store.register_atom(guid, meta, tad, snapshot, check)
        self._recovery.look_again_if_gone(state)
        return StoredLocation(state.location, incarnation=state.incarnation)

    def holding(self, guid: str) -> AbstractContextManager[None]:
        """The atom's lock, held (storesite.batches holds several, in GUID order)."""
        return self._locks.hold(guid)

    @metrics.timed(metrics.STORESITE_CHECKPOINTS, metrics.STORESITE_CHECKPOINT_SECONDS)
    def put_checkpoint(
        self, guid: str, tad: TAD, snapshot: bytes, seq: int, check: Provenance = UNSTATED
    ) -> bool:
        with self._locks.hold(guid):
            return self.store.put_checkpoint(guid, tad, seq, snapshot, check)

    @metrics.timed(metrics.STORESITE_CHECKPOINTS, metrics.STORESITE_CHECKPOINT_SECONDS)
    def put_checkpoint_delta(
        self,
        guid: str,
        tad: TAD,
        delta: bytes,
        seq: int,
        check: Provenance,
        base: tuple[int, int],
    ) -> DeltaOutcome:
        """An incremental checkpoint on base ``(seq, checksum)`` (storesite.deltas)."""
        with self._locks.hold(guid):
            return put_delta(self.store, guid, tad, seq, delta, check, *base)

    def put_logs(self, guid: str, lines: bytes) -> None:
        """A node's lines of ``guid``, one of ours (docs/DESIGN.md §12)."""
        self.store.get(guid)  # an atom we keep: no records for made-up GUIDs
        self.store.logs.put(guid, lines)

    def get_logs(self, guid: str) -> tuple[bytes, AtomState]:
        """``guid``'s lines kept here, and its location record (where newer ones are)."""
        return self.store.logs.get(guid), self.store.get(guid)

    def get_checkpoint(self, guid: str) -> Checkpoint:
        return self.store.latest_checkpoint(guid)

    def forget(self, guid: str) -> None:
        with self._locks.hold(guid):
            self.store.forget(guid)

    def list_atoms(self) -> list[AtomState]:
        return [s for s in self.store.atoms() if not s.forwarded_to]

    def status(self) -> StoreStatus:
        return self.store.status()

    # ---------------------------------------------------------- migration

    def prepare(self, guid: str, source: TAD, destination: str) -> int:
        with self._locks.hold(guid):
            if destination not in self.directory.nodes():
                raise MigrationError(
                    f"cannot move atom {guid} to {destination}: no live node by that name"
                )
            return self.store.moves.prepare(guid, source, destination)

    def stage(self, guid: str, tad: TAD, snapshot: bytes, check: Provenance = UNSTATED) -> None:
        with self._locks.hold(guid):
            self.store.moves.stage(guid, tad, snapshot, check)

    def commit(
        self, guid: str, tad: TAD, snapshot: bytes, check: Provenance = UNSTATED
    ) -> StoredLocation:
        """Complete a move to ``tad``; ``check.incarnation`` is the destination's that staged it."""
        with self._locks.hold(guid):
            self._check_stager(guid, tad, check.incarnation)
            state = self.store.moves.commit(guid, tad, snapshot, check)
        self._loads.bump(tad.node)
        self._recovery.look_again_if_gone(state)
        return StoredLocation(state.location, incarnation=state.incarnation)

    def _check_stager(self, guid: str, tad: TAD, incarnation: str) -> None:
        """Refuse (and abort) a COMMIT unless the incarnation that staged is the live one.

        A destination restarted after staging has no copy: committing to it
        would strand the atom. The cached membership answers when it lists that
        incarnation (ZooKeeper is read only otherwise: a sync costs a move
        1.5 ms); if the incarnation ended a moment ago, the membership change
        recovers the atom from the checkpoint committed here. Caller holds the
        atom lock.
        """
        if incarnation:
            member = self.directory.nodes().get(tad.node)
            if member is not None and member.incarnation == incarnation:
                return
            live = self.directory.live_incarnation(tad.node)
            if live == incarnation:
                return
            why = (
                f"node {tad.node} is not live"
                if live is None
                else f"node {tad.node} restarted since its incarnation {incarnation} "
                f"staged the copy (live now: {live})"
            )
        else:
            why = f"it names no incarnation of node {tad.node}"
        self.store.moves.abort(guid, tad.age)
        raise MigrationError(f"commit of atom {guid} to {tad} refused: {why}; the move is aborted")

    def abort(self, guid: str, age: int) -> None:
        with self._locks.hold(guid):
            self.store.moves.abort(guid, age)

    def passivated(
        self, guid: str, tad: TAD, snapshot: bytes, check: Provenance = UNSTATED
    ) -> None:
        with self._locks.hold(guid):
            self.store.passivated(guid, tad, snapshot, check)

    # ------------------------------------------------------------- locate

    def locate(self, guid: str) -> StoredLocation:
        """Where the atom is now: activates a dormant atom and recovers one whose node died."""
        with self._locks.hold(guid):
            state = self.store.get(guid)
            if state.forwarded_to:
                return StoredLocation(state.location, state.dormant, state.forwarded_to)
            if state.dormant:
                return self._place(state, DORMANT)
            held = self._activator.holder(state)
            if held is not None:
                return StoredLocation(held.location, incarnation=held.incarnation)
            return self._place(state, gone(state))

    def _place(self, state: AtomState, reason: str) -> StoredLocation:
        """Activate the atom on a live node, if this storesite is its home.

        A record here whose home the name service names elsewhere was left by
        a home move that stopped half way: answered as forwarded there, never
        activated (docs/DESIGN.md §6 "Moving home"). Caller holds the atom lock.
        """
        home = self.directory.home(state.guid)
        if home != self.sid:
            return StoredLocation(state.location, state.dormant, home)
        placed = self._activator.place(state, reason)
        metrics.STORESITE_ACTIVATIONS.labels("dormant" if reason == DORMANT else "recovery").inc()
        self._recovery.look_again_if_gone(placed)
        return StoredLocation(placed.location, incarnation=placed.incarnation)

    # ---------------------------------------------------------- move home

    def move_home(self, guid: str, destination: str) -> StoredLocation:
        """Hand ``guid``'s records to storesite ``destination``; keep a forwarding record."""
        if destination == self.sid:
            raise StorageError(f"atom {guid} is already homed at storesite {destination}")
        with self._locks.hold(guid):
            state = self.store.get(guid)
            if state.forwarded_to:
                raise StorageError(
                    f"atom {guid} already moved from storesite {self.sid} to {state.forwarded_to}"
                )
            if state.pending is not None:
                raise MigrationError(
                    f"atom {guid} is moving to node {state.pending.node}; its home cannot move now"
                )
            checkpoint = self.store.latest_checkpoint(guid)
            address = self.directory.storesite_address(destination)
            seq = checkpoint.seq if checkpoint.tad == state.location else 0
            generation = checkpoint.generation if checkpoint.generation >= 0 else None
            data = CheckpointInfo(
                guid,
                state.location,
                checkpoint.snapshot,
                state.meta,
                seq,
                checksum=checkpoint.checksum,
                generation=generation,
                incarnation=state.incarnation,
            )
            with StoresiteClient(address, sid=destination, timeout=30.0) as peer:
                module_hash = state.meta.module_hash
                if module_hash and self.store.modules.has(module_hash):
                    peer.put_module(self.store.modules.get(module_hash))
                peer.adopt_atom(data, dormant=state.dormant)
            self.directory.set_home(guid, destination)
            state = self.store.moves.set_forwarded(guid, destination)
        log.info("atom %s is now homed at storesite %s", guid, destination)
        return StoredLocation(state.location, state.dormant, destination)

    def adopt_atom(self, data: CheckpointInfo) -> StoredLocation:
        """Become the home of an atom another storesite hands over.

        An empty node in the TAD marks a dormant atom (see
        :meth:`StoresiteClient.adopt_atom`).
        """
        dormant = not data.tad.node
        with self._locks.hold(data.guid):
            # A live record here is replaced only when it never became (or no
            # longer is) the home: an adoption whose move stopped half way, or
            # an old home that died before it forwarded. The move is retried.
            stale = self.directory.home(data.guid) != self.sid
            state = self.store.moves.adopt_atom(
                data.guid,
                data.meta,
                data.tad,
                data.seq,
                data.snapshot,
                Provenance(data.checksum, data.generation, data.incarnation),
                dormant=dormant,
                replace_live=stale,
            )
        if not dormant:
            self._recovery.look_again_if_gone(state)
        return StoredLocation(state.location, state.dormant, incarnation=state.incarnation)
