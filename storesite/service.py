"""The storesite's behaviour: location, activation, recovery, moving home (DESIGN.md §4, §5, §6).

:class:`Storesite` joins the durable records (:mod:`storesite.store`), the
cluster's membership (a :class:`Directory`, normally the name service) and
the supervisors (:class:`~hermesx.rpc.node_client.NodeClient`). The gRPC
servicer in :mod:`storesite.server` is a thin layer over it.

Everything that changes one atom's records runs under that atom's lock, so
two concurrent Locates of a dormant atom activate it once, a recovery and a
commit never interleave, and a move home sees no checkpoint slip past it.

Recovery (§6): when a node leaves the name service (its session expired —
supervisors fence themselves), every non-dormant atom recorded on it is
restarted from its latest checkpoint on a live node with a higher age, in
parallel on a bounded pool. An atom whose node is alive is never recovered.

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
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Protocol

from hermesx.core.errors import (
    CallTimeoutError,
    HermesError,
    MigrationError,
    NameNotFoundError,
    StorageError,
    UnreachableError,
)
from hermesx.core.identity import TAD
from hermesx.rpc.node_client import NodeClient
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.storesite_client import CheckpointInfo, Location, StoresiteClient
from storesite.placement import LoadCache, Member, rank_nodes
from storesite.store import AtomState, AtomStore, Checkpoint, StoreStatus

__all__ = ["Directory", "Storesite"]

log = logging.getLogger(__name__)

# Seconds between looks at atoms whose holder could not be told.
RECHECK_S = 2.0


class Directory(Protocol):
    """What the storesite needs from the name service."""

    def nodes(self) -> Mapping[str, Member]:
        """Live nodes by name (may lag a little behind ZooKeeper)."""
        ...

    def live_incarnation(self, node: str) -> str | None:
        """The incarnation of live node ``node`` read fresh (not cached); None if none is live."""
        ...

    def storesite_address(self, sid: str) -> str:
        """Address of a live storesite; NameNotFoundError if there is none."""
        ...

    def set_home(self, guid: str, sid: str) -> None: ...


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
        self._locks_guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._pool = ThreadPoolExecutor(recovery_workers, thread_name_prefix="recovery")
        self._members_guard = threading.Lock()
        # Node name -> (address, incarnation) as of the last membership change;
        # None before the first.
        self._members: dict[str, tuple[str, str]] | None = None
        # Atoms whose holder could not be told (ZooKeeper or the node did not
        # answer): looked at again every RECHECK_S.
        self._rechecks: dict[str, TAD] = {}
        self._rechecker: threading.Thread | None = None
        self._closed = False

    @property
    def sid(self) -> str:
        return self.store.sid

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.supervisors.close()

    @contextmanager
    def _atom_lock(self, guid: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(guid, threading.Lock())
        with lock:
            yield

    # ------------------------------------------------------ plain records

    def put_module(self, module: bytes) -> str:
        return self.store.put_module(module)

    def get_module(self, module_hash: str) -> bytes:
        return self.store.get_module(module_hash)

    def register_atom(
        self,
        guid: str,
        meta: pb.AtomMeta,
        tad: TAD,
        snapshot: bytes,
        *,
        incarnation: str = "",
        **check: int | None,
    ) -> Location:
        """``check``: the snapshot's ``checksum`` and ``generation`` (see AtomStore)."""
        if not incarnation:
            # A creator that does not say: the incarnation its node is listed with.
            member = self.directory.nodes().get(tad.node)
            incarnation = member.incarnation if member is not None else ""
        with self._atom_lock(guid):
            state = self.store.register_atom(
                guid, meta, tad, snapshot, incarnation=incarnation, **check
            )
        self._look_again_if_gone(state)
        return Location(state.location, incarnation=state.incarnation)

    def put_checkpoint(
        self,
        guid: str,
        tad: TAD,
        snapshot: bytes,
        seq: int,
        *,
        periodic: bool = False,
        **check: int | None,
    ) -> bool:
        with self._atom_lock(guid):
            return self.store.put_checkpoint(guid, tad, seq, snapshot, periodic=periodic, **check)

    def get_checkpoint(self, guid: str) -> Checkpoint:
        return self.store.latest_checkpoint(guid)

    def forget(self, guid: str) -> None:
        with self._atom_lock(guid):
            self.store.forget(guid)
        with self._locks_guard:
            self._locks.pop(guid, None)

    def list_atoms(self) -> list[AtomState]:
        return [s for s in self.store.atoms() if not s.forwarded_to]

    def status(self) -> StoreStatus:
        return self.store.status()

    # ---------------------------------------------------------- migration

    def prepare(self, guid: str, source: TAD, destination: str) -> int:
        with self._atom_lock(guid):
            if destination not in self.directory.nodes():
                raise MigrationError(
                    f"cannot move atom {guid} to {destination}: no live node by that name"
                )
            return self.store.prepare(guid, source, destination)

    def stage(self, guid: str, tad: TAD, snapshot: bytes, **check: int | None) -> None:
        with self._atom_lock(guid):
            self.store.stage(guid, tad, snapshot, **check)

    def commit(
        self,
        guid: str,
        tad: TAD,
        snapshot: bytes,
        *,
        incarnation: str = "",
        **check: int | None,
    ) -> Location:
        """Complete a move to ``tad``; ``incarnation`` is the destination's that staged the copy."""
        with self._atom_lock(guid):
            self._check_stager(guid, tad, incarnation)
            state = self.store.commit(guid, tad, snapshot, incarnation=incarnation, **check)
        self._loads.bump(tad.node)
        self._look_again_if_gone(state)
        return Location(state.location, incarnation=state.incarnation)

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
        self.store.abort(guid, tad.age)
        raise MigrationError(f"commit of atom {guid} to {tad} refused: {why}; the move is aborted")

    def abort(self, guid: str, age: int) -> None:
        with self._atom_lock(guid):
            self.store.abort(guid, age)

    def passivated(self, guid: str, tad: TAD, snapshot: bytes, **check: int | None) -> None:
        with self._atom_lock(guid):
            self.store.passivated(guid, tad, snapshot, **check)

    # ------------------------------------------------------------- locate

    def locate(self, guid: str) -> Location:
        """Where the atom is now: activates a dormant atom and recovers one whose node died."""
        with self._atom_lock(guid):
            state = self.store.get(guid)
            if state.forwarded_to:
                return Location(state.location, state.dormant, state.forwarded_to)
            if state.dormant:
                return self._place(state, "dormant")
            held = self._holder(state)
            if held is not None:
                return Location(held.location, incarnation=held.incarnation)
            return self._place(state, _gone(state))

    def _holder(self, state: AtomState) -> AtomState | None:
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

    def _place(self, state: AtomState, reason: str) -> Location:
        """Activate ``state``'s atom on the best live node. Caller holds the atom lock."""
        guid = state.guid
        meta = state.meta
        started = time.monotonic()
        nodes = self.directory.nodes()
        fitting = rank_nodes(nodes, meta.tags, {})
        candidates = rank_nodes(nodes, meta.tags, self._loads.loads(fitting))
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
                )
            except CallTimeoutError as err:
                # The node may still stage the copy, late; it serves only if
                # this record names its TAD, and it never will: try another.
                log.warning(
                    "node %s did not stage atom %s (%s) in time: %s", member.name, guid, tad, err
                )
                self._loads.forget(member.name)
                last = err
                continue
            except HermesError as err:
                log.warning("node %s refused atom %s (%s): %s", member.name, guid, tad, err)
                self._loads.forget(member.name)
                last = err
                continue
            # Durable before the copy serves: only the TAD recorded here ever serves.
            placed = self.store.activated(guid, tad, incarnation)
            self._loads.bump(member.name)
            try:
                self.supervisors.confirm(member, guid, tad, incarnation)
            except HermesError as err:
                # The staged copy asks this storesite after a while (or at its
                # first call) and finds its TAD recorded here.
                log.warning(
                    "node %s did not hear that atom %s is at %s: %s", member.name, guid, tad, err
                )
            self._look_again_if_gone(placed)
            log.info(
                "activated atom %s on %s (%s) in %.1f ms",
                guid,
                tad,
                reason,
                (time.monotonic() - started) * 1000,
            )
            return Location(tad, incarnation=incarnation)
        self.store.mark_dormant(guid)
        tags = f" with tags {sorted(meta.tags)}" if meta.tags else ""
        if last is None:
            raise UnreachableError(f"atom {guid} is {reason} and no live node{tags} can take it")
        raise UnreachableError(f"atom {guid} is {reason} and no live node{tags} took it: {last}")

    # ----------------------------------------------------------- recovery

    def on_nodes(self, members: Mapping[str, Member]) -> None:
        """Name-service watch callback: the full set of live nodes after a change."""
        current = {name: (m.address, m.incarnation) for name, m in members.items()}
        with self._members_guard:
            previous = self._members
            self._members = current
        if self._closed:
            return
        if previous is None:
            # At start every record is checked against the live incarnations:
            # nodes may have died or restarted while this storesite was down.
            gone: set[str] | None = None
        else:
            gone = {
                name
                for name, listed in previous.items()
                if current.get(name) != listed  # left, or a new incarnation
            }
            if not gone:
                return
            log.warning(
                "nodes gone: %s",
                ", ".join(f"{n} (incarnation {previous[n][1] or '?'})" for n in sorted(gone)),
            )
        self._submit(self._recover_nodes, gone, current)

    def _submit(self, task: Callable[..., None], *args: object) -> None:
        try:
            self._pool.submit(task, *args)
        except RuntimeError:
            # Shut down meanwhile: the next start recovers what is left.
            log.debug("storesite %s is closing; recovery task dropped", self.sid)

    def _recover_nodes(self, gone: set[str] | None, live: Mapping[str, tuple[str, str]]) -> None:
        """Look at every atom a gone incarnation may have held (every atom if ``gone`` is None)."""
        suspects = []
        for state in self.store.atoms():
            if state.forwarded_to or state.dormant:
                continue
            node = state.location.node
            if gone is not None and node not in gone:
                continue
            listed = live.get(node)
            if listed is not None and state.incarnation and listed[1] == state.incarnation:
                continue  # held by the incarnation listed now
            suspects.append(state)
        for state in suspects:
            if self._closed:
                return
            self._submit(self._recover_one, state.guid, state.location)

    def _recover_one(self, guid: str, dead: TAD) -> None:
        started = time.monotonic()
        with self._atom_lock(guid):
            try:
                state = self.store.get(guid)
            except NameNotFoundError:
                return
            if state.forwarded_to or state.dormant or state.location != dead:
                return  # moved, passivated or already recovered meanwhile
            try:
                if self._holder(state) is not None:
                    return
            except HermesError as err:
                log.warning(
                    "atom %s: cannot tell whether node %s still holds it (%s); looking again",
                    guid,
                    dead.node,
                    err,
                )
                self._look_again(guid, dead)
                return
            try:
                location = self._place(state, _gone(state))
            except HermesError as err:
                log.warning("atom %s stays dormant after losing node %s: %s", guid, dead.node, err)
                return
        log.info(
            "recovered atom %s from %s onto %s in %.1f ms",
            guid,
            dead,
            location.tad,
            (time.monotonic() - started) * 1000,
        )

    def _look_again_if_gone(self, state: AtomState) -> None:
        """After recording a holder: if its incarnation is not (or no longer) listed, look again.

        A membership change handled while the record was being written may
        have missed it; the recorded incarnation's end must not go unseen.
        """
        try:
            member = self.directory.nodes().get(state.location.node)
        except HermesError:
            member = None
        if member is None or member.incarnation != state.incarnation:
            self._submit(self._recover_one, state.guid, state.location)

    def _look_again(self, guid: str, tad: TAD) -> None:
        with self._members_guard:
            self._rechecks[guid] = tad
            if self._rechecker is None:
                self._rechecker = threading.Thread(
                    target=self._run_rechecks, name="recheck", daemon=True
                )
                self._rechecker.start()

    def _run_rechecks(self) -> None:
        while not self._closed:
            time.sleep(RECHECK_S)
            with self._members_guard:
                due, self._rechecks = self._rechecks, {}
            for guid, tad in due.items():
                self._submit(self._recover_one, guid, tad)

    # ---------------------------------------------------------- move home

    def move_home(self, guid: str, destination: str) -> Location:
        """Hand ``guid``'s records to storesite ``destination``; keep a forwarding record."""
        if destination == self.sid:
            raise StorageError(f"atom {guid} is already homed at storesite {destination}")
        with self._atom_lock(guid):
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
                if module_hash and self.store.has_module(module_hash):
                    peer.put_module(self.store.get_module(module_hash))
                peer.adopt_atom(data, dormant=state.dormant)
            self.directory.set_home(guid, destination)
            state = self.store.set_forwarded(guid, destination)
        log.info("atom %s is now homed at storesite %s", guid, destination)
        return Location(state.location, state.dormant, destination)

    def adopt_atom(self, data: CheckpointInfo) -> Location:
        """Become the home of an atom another storesite hands over.

        An empty node in the TAD marks a dormant atom (see
        :meth:`StoresiteClient.adopt_atom`).
        """
        dormant = not data.tad.node
        with self._atom_lock(data.guid):
            state = self.store.adopt_atom(
                data.guid,
                data.meta,
                data.tad,
                data.seq,
                data.snapshot,
                dormant=dormant,
                checksum=data.checksum,
                generation=data.generation,
                incarnation=data.incarnation,
            )
        if not dormant:
            self._look_again_if_gone(state)
        return Location(state.location, state.dormant, incarnation=state.incarnation)


def _gone(state: AtomState) -> str:
    """Why the atom's recorded holder no longer serves, for logs and errors."""
    node = state.location.node
    if state.incarnation:
        return f"incarnation {state.incarnation} of node {node} is gone"
    return f"node {node} does not hold it"
