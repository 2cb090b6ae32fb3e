"""An atom's checkpoints: the latest plus three, checked on the way in and out (docs/DESIGN.md §6).

:class:`CheckpointWindow` keeps the ``checkpoints`` sub-database: each
atom's snapshots under consecutive slot numbers, the latest and the
:data:`~storesite.records.KEEP_PREVIOUS_CHECKPOINTS` before it, each with
its TAD, seq, CRC-32 and generation. The slot after the latest holds the
snapshot staged for a pending move until COMMIT makes it the latest.

Damage: every checkpoint's checksum is checked every time it is read back,
and a damaged one is never handed out. The newest good one kept is used
instead only when it holds every call acknowledged as durable (the atom
record's ``durable_generation``); otherwise the read fails with a
CheckpointDamagedError naming the atom and the damage.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import lmdb

from hermesx.core.errors import CheckpointDamagedError, MigrationError, StorageError
from hermesx.core.identity import TAD
from storesite.records import (
    KEEP_PREVIOUS_CHECKPOINTS,
    AtomState,
    AtomTable,
    Checkpoint,
    checkpoint_key,
    pack_checkpoint,
    unpack_checkpoint,
)

__all__ = ["CheckpointWindow"]

log = logging.getLogger(__name__)


class CheckpointWindow:
    """The kept checkpoints of every atom, written inside the atom table's transactions."""

    def __init__(self, table: AtomTable) -> None:
        self._table = table
        self._db = table.env.checkpoints
        self.sid = table.sid

    def store(
        self,
        txn: lmdb.Transaction,
        state: AtomState,
        tad: TAD,
        seq: int,
        snapshot: bytes,
        checksum: int,
        generation: int,
        *,
        acknowledged: bool = True,
    ) -> AtomState:
        """Write a checkpoint into the next slot and make it the latest."""
        self.stage(txn, state, pack_checkpoint(tad, seq, snapshot, checksum, generation))
        return self.advance(txn, state, tad, seq, generation, acknowledged=acknowledged)

    def stage(self, txn: lmdb.Transaction, state: AtomState, packed: bytes) -> None:
        """Write a packed checkpoint into the slot after the latest, not yet the latest."""
        txn.put(checkpoint_key(state.guid, state.checkpoint_no + 1), packed, db=self._db)

    def staged(self, txn: lmdb.Transaction, state: AtomState, tad: TAD) -> Checkpoint:
        """The snapshot staged for the move to ``tad``, checked; MigrationError if none was."""
        number = state.checkpoint_no + 1
        staged = txn.get(checkpoint_key(state.guid, number), db=self._db)
        if staged is None:
            raise MigrationError(f"commit of atom {state.guid} to {tad}: no snapshot was staged")
        checked = unpack_checkpoint(state, bytes(staged), number)
        if checked.tad != tad:
            raise MigrationError(f"commit of atom {state.guid} to {tad}: no snapshot was staged")
        return checked

    def advance(
        self,
        txn: lmdb.Transaction,
        state: AtomState,
        tad: TAD,
        seq: int,
        generation: int,
        *,
        acknowledged: bool = True,
    ) -> AtomState:
        """The checkpoint in the next slot becomes the latest.

        ``acknowledged``: its calls were promised durable (all but periodic
        checkpoints), so no fallback may go below it from now on.
        """
        number = state.checkpoint_no + 1
        # Numbers are consecutive, so exactly one checkpoint falls out of the window.
        expired = number - KEEP_PREVIOUS_CHECKPOINTS - 1
        if expired >= 1:
            txn.delete(checkpoint_key(state.guid, expired), db=self._db)
        state = replace(
            state,
            checkpoint_no=number,
            checkpoint_age=tad.age,
            checkpoint_seq=seq,
            checkpoint_generation=generation,
            durable_generation=generation if acknowledged else state.durable_generation,
        )
        self._table.put(txn, state)
        return state

    def latest(self, txn: lmdb.Transaction, state: AtomState) -> Checkpoint:
        """The latest checkpoint of ``state``, checked (CheckpointDamagedError if damaged)."""
        number = state.checkpoint_no
        data = txn.get(checkpoint_key(state.guid, number), db=self._db)
        if data is None:
            raise CheckpointDamagedError(f"checkpoint #{number} of atom {state.guid} is missing")
        return unpack_checkpoint(state, bytes(data), number)

    def restorable(self, txn: lmdb.Transaction, state: AtomState) -> Checkpoint:
        """The latest good checkpoint of ``state`` that keeps every acknowledged call."""
        guid = state.guid
        damage: list[str] = []
        oldest = max(1, state.checkpoint_no - KEEP_PREVIOUS_CHECKPOINTS)
        for number in range(state.checkpoint_no, oldest - 1, -1):
            data = txn.get(checkpoint_key(guid, number), db=self._db)
            try:
                if data is None:
                    raise CheckpointDamagedError(f"checkpoint #{number} of atom {guid} is missing")
                checkpoint = unpack_checkpoint(state, bytes(data), number)
            except CheckpointDamagedError as exc:
                damage.append(str(exc))
                continue
            if not damage:
                return checkpoint
            durable = state.durable_generation
            if checkpoint.generation >= 0 and durable >= 0 and checkpoint.generation >= durable:
                log.warning(
                    "storesite %s: %s; restoring the previous good checkpoint (%s seq %d), "
                    "which holds every acknowledged call (generation %d)",
                    self.sid,
                    damage[0],
                    checkpoint.tad,
                    checkpoint.seq,
                    checkpoint.generation,
                )
                return checkpoint
            known = "unknown" if durable < 0 else str(durable)
            raise CheckpointDamagedError(
                f"storesite {self.sid}: {damage[0]}; the previous good checkpoint "
                f"({checkpoint.tad} seq {checkpoint.seq}) lacks acknowledged calls "
                f"(it holds generation {checkpoint.generation}, acknowledged: {known}), "
                f"so atom {guid} is not restored"
            )
        if not damage:
            raise StorageError(f"storesite {self.sid} lost the latest checkpoint of atom {guid}")
        raise CheckpointDamagedError(
            f"storesite {self.sid}: {damage[0]}; no good checkpoint of atom {guid} is kept, "
            "so it is not restored"
        )

    def history(self, txn: lmdb.Transaction, state: AtomState) -> list[Checkpoint]:
        """Kept checkpoints of ``state``'s atom, oldest first, checked (a damaged one raises)."""
        prefix = state.guid.encode() + b"/"
        found: list[Checkpoint] = []
        cursor = txn.cursor(db=self._db)
        if cursor.set_range(prefix):
            for raw_key, value in cursor:
                key = bytes(raw_key)
                if not key.startswith(prefix):
                    break
                number = int.from_bytes(key[len(prefix) :], "big")
                if number > state.checkpoint_no:
                    break  # a staged snapshot of a pending move, not a checkpoint yet
                found.append(unpack_checkpoint(state, bytes(value), number))
        return found

    def delete_all(self, txn: lmdb.Transaction, guid: str) -> None:
        """Delete every kept (and staged) checkpoint of ``guid``."""
        prefix = guid.encode() + b"/"
        cursor = txn.cursor(db=self._db)
        if cursor.set_range(prefix):
            while bytes(cursor.key()).startswith(prefix):
                if not cursor.delete():
                    break
