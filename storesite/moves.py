"""The storesite's side of moves: an atom between nodes, and its home between storesites.

docs/DESIGN.md §5 participant side. :class:`MoveRecords` keeps the records of a
move of an atom from one node to another: PREPARE reserves the age of the
move (a lease of :data:`~storesite.records.PENDING_LEASE_S`, never a lock),
STAGE puts the destination's snapshot into the next checkpoint slot, COMMIT
makes the destination the location and that snapshot the latest checkpoint,
ABORT drops the reservation. It also keeps the records of a home move: the
storesite that adopts an atom records it as its own, the one it left keeps
only a forwarding record. Each step is one durable LMDB transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from hermesx.core.errors import MigrationError, StorageError
from hermesx.core.identity import TAD
from hermesx.rpc.proto import hermesx_pb2 as pb
from storesite.chain import pack_whole
from storesite.checkpoints import CheckpointWindow
from storesite.records import (
    UNSTATED,
    AtomState,
    AtomTable,
    Provenance,
    check_pending,
)

__all__ = ["MoveRecords"]

log = logging.getLogger(__name__)


class MoveRecords:
    """The participant's records of moves (of atoms between nodes, of homes between storesites)."""

    def __init__(
        self,
        table: AtomTable,
        window: CheckpointWindow,
        records_gone: Callable[[str], None] = lambda _guid: None,
    ) -> None:
        """``records_gone(guid)``: told once a home move deleted ``guid``'s checkpoints."""
        self._table = table
        self._window = window
        self._records_gone = records_gone
        self.sid = table.sid

    def prepare(self, guid: str, source: TAD, destination: str) -> int:
        """Reserve the age of a move from ``source`` to ``destination``.

        The age advances on every attempt, even one that is later aborted,
        so no two attempts ever share an age.
        """
        with self._table.write(guid) as txn:
            state = self._table.live(txn, guid)
            if state.pending is not None:
                raise MigrationError(
                    f"atom {guid} is already moving to {state.pending.node} "
                    f"(age {state.pending.age})"
                )
            if state.dormant:
                raise MigrationError(f"atom {guid} is dormant; it cannot move from {source}")
            if source != state.location:
                raise MigrationError(
                    f"stale move of atom {guid}: source {source} is not its location "
                    f"{state.location}"
                )
            if destination == source.node:
                raise MigrationError(f"atom {guid} is already on {destination}")
            age = state.next_age
            state = replace(
                state, next_age=age + 1, pending=TAD(destination, age), pending_since=time.time()
            )
            self._table.put(txn, state)
        log.info("prepared move of %s from %s to %s@%s", guid, source, destination, age)
        return age

    def stage(self, guid: str, tad: TAD, snapshot: bytes, check: Provenance = UNSTATED) -> None:
        """Keep the snapshot of the pending move to ``tad`` for its COMMIT.

        It goes straight into the next checkpoint slot, so COMMIT only has to
        make it current (no 16 MiB copy while calls are held). Nothing else
        writes checkpoints of an atom while its move is pending.
        """
        checksum = self._table.arriving(
            guid, snapshot, check, f"staged snapshot of atom {guid} for {tad}"
        )
        with self._table.write(guid) as txn:
            state = self._table.live(txn, guid)
            check_pending(state, tad, "staging")
            packed = pack_whole(tad, 0, snapshot, checksum, check.stored_generation)
            self._window.stage(txn, state, packed)

    def commit(
        self, guid: str, tad: TAD, snapshot: bytes, check: Provenance = UNSTATED
    ) -> AtomState:
        """Complete the pending move: ``tad`` becomes the location, the snapshot the checkpoint.

        An empty ``snapshot`` means the one staged for this move, checked
        first: a damaged one fails the commit, so the move aborts.
        ``check.incarnation`` is the destination's that staged the copy.
        """
        self._table.check_size(guid, snapshot)
        checksum = 0
        if snapshot:
            checksum = check.arrived(snapshot, f"snapshot of atom {guid} committed at {tad}")
        with self._table.write(guid) as txn:
            state = self._table.live(txn, guid)
            check_pending(state, tad, "commit")
            state = replace(state, location=tad, pending=None, incarnation=check.incarnation)
            if snapshot:
                state = self._window.store(
                    txn, state, tad, 0, snapshot, checksum, check.stored_generation
                )
            else:
                staged = self._window.staged(txn, state, tad)
                state = self._window.advance(txn, state, tad, 0, staged.generation)
        log.info("committed move of %s to %s", guid, tad)
        return state

    def abort(self, guid: str, age: int) -> bool:
        """Drop the pending move of that age; the location stays. Idempotent."""
        with self._table.write(guid) as txn:
            state = self._table.live(txn, guid)
            if state.pending is None or state.pending.age != age:
                return False
            self._table.put(txn, replace(state, pending=None))
            # A staged snapshot in the next slot is simply overwritten later.
        log.info("aborted move of %s (age %s)", guid, age)
        return True

    # ---------------------------------------------------------- home moves

    def adopt_atom(
        self,
        guid: str,
        meta: pb.AtomMeta,
        tad: TAD,
        seq: int,
        snapshot: bytes,
        check: Provenance = UNSTATED,
        *,
        dormant: bool,
        next_age: int | None = None,
        replace_live: bool = False,
    ) -> AtomState:
        """Take over an atom whose home moves here from another storesite.

        A record here is replaced when it only forwards, or with
        ``replace_live`` (this storesite is not the atom's home: the record
        is left by a home move that stopped half way).
        """
        checksum = self._table.arriving(
            guid, snapshot, check, f"checkpoint of atom {guid} handed over at {tad}"
        )
        with self._table.write(guid) as txn:
            old = self._table.exists(txn, guid)
            if old is not None:
                if not old.forwarded_to and not replace_live:
                    raise StorageError(
                        f"atom {guid} is already homed at storesite {self.sid}; cannot adopt it"
                    )
                # The atom is coming back, or its move is made again: the old record goes.
                next_age = max(next_age or 0, old.next_age)
                self._window.delete_all(txn, guid)
                self._records_gone(guid)
            state = AtomState.first(
                guid,
                meta,
                tad,
                seq=seq,
                dormant=dormant,
                next_age=next_age or 0,
                adopted=True,
                incarnation="" if dormant else check.incarnation,
            )
            state = self._window.store(
                txn, state, tad, seq, snapshot, checksum, check.stored_generation
            )
        log.info("adopted atom %s at %s (dormant=%s)", guid, tad, dormant)
        return state

    def set_forwarded(self, guid: str, storesite: str) -> AtomState:
        """The atom's home moved to ``storesite``; keep only a forwarding record."""
        with self._table.write(guid) as txn:
            state = self._table.live(txn, guid)
            self._window.delete_all(txn, guid)
            state = replace(
                state, forwarded_to=storesite, pending=None, checkpoint_no=0, anchors=()
            )
            self._table.put(txn, state)
        self._records_gone(guid)
        return state
