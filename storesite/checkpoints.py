"""An atom's checkpoints: the latest plus three, checked on the way in and out (docs/DESIGN.md §6).

:class:`CheckpointWindow` keeps the ``checkpoints`` sub-database: each
atom's checkpoints under consecutive slot numbers, the latest and the
:data:`~storesite.records.KEEP_PREVIOUS_CHECKPOINTS` before it, each with
its TAD, seq, CRC-32 and generation, as a whole snapshot or a delta on the
slot before it (:mod:`storesite.chain`); the slots a kept delta composes
from are kept with it. The slot after the latest holds the snapshot staged
for a pending move until COMMIT makes it the latest. Readers get whole
snapshots only: a delta slot is composed when read.

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

from hermesx.core.delta import compose_chain, decode_delta
from hermesx.core.errors import CheckpointDamagedError, MigrationError, StorageError
from hermesx.core.identity import TAD
from hermesx.core.snapshot import AtomState as State
from hermesx.core.snapshot import decode_state, encode_state, snapshot_checksum
from storesite.chain import Link, Record, pack_delta, pack_whole, unpack_record
from storesite.records import (
    KEEP_PREVIOUS_CHECKPOINTS,
    AtomState,
    AtomTable,
    Checkpoint,
    ParsedRecords,
    Provenance,
    checkpoint_key,
)

__all__ = ["CheckpointWindow"]

log = logging.getLogger(__name__)


class CheckpointWindow:
    """The kept checkpoints of every atom, written inside the atom table's transactions."""

    def __init__(self, table: AtomTable) -> None:
        self._table = table
        self._db = table.env.checkpoints
        self.sid = table.sid
        # A delta is checked against the record the one before it wrote.
        self._records: ParsedRecords[Record] = ParsedRecords()

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
        self.stage(txn, state, pack_whole(tad, seq, snapshot, checksum, generation))
        return self.advance(txn, state, tad, seq, generation, acknowledged=acknowledged)

    def store_delta(
        self,
        txn: lmdb.Transaction,
        state: AtomState,
        tad: TAD,
        seq: int,
        link: Link,
        delta: bytes,
        checksum: int,
        generation: int,
        *,
        acknowledged: bool = True,
    ) -> AtomState:
        """Write a delta record on the latest checkpoint into the next slot and make it the
        latest (``link`` as :meth:`storesite.chain.Record.next_link` made it)."""
        packed = pack_delta(tad, seq, link, delta, checksum, generation)
        self.stage(txn, state, packed)
        number = state.checkpoint_no + 1
        self._records.keep(packed, Record(number, tad, seq, delta, checksum, generation, link))
        return self.advance(
            txn, state, tad, seq, generation, anchor=link.anchor, acknowledged=acknowledged
        )

    def put_newer(
        self,
        txn: lmdb.Transaction,
        state: AtomState,
        check: Provenance,
        tad: TAD,
        seq: int,
        snapshot: bytes,
        checksum: int,
        link: Link | None,
    ) -> bool:
        """Write a checkpoint (a delta record on the latest with ``link``) into ``txn``,
        ``state`` the atom's record read there, unless it is not newer than the latest
        (then False: checkpoints may arrive out of order, docs/DESIGN.md §6)."""
        guid, generation = state.guid, check.generation
        if tad.age == state.checkpoint_age and seq <= state.checkpoint_seq:
            log.debug("ignored checkpoint %s seq %s of %s: not newer", tad, seq, guid)
            return False
        if (
            tad.age == state.checkpoint_age
            and generation is not None
            and 0 <= generation < state.checkpoint_generation
        ):
            # A newer number on an older state: one node's snapshots of
            # one age follow each other, so the held one has all of it.
            log.warning(
                "ignored checkpoint %s seq %s of %s: it holds generation %d, older than "
                "the %d stored",
                tad,
                seq,
                guid,
                generation,
                state.checkpoint_generation,
            )
            return False
        stored, ack = check.stored_generation, not check.periodic
        if link is None:
            self.store(txn, state, tad, seq, snapshot, checksum, stored, acknowledged=ack)
        else:
            self.store_delta(
                txn, state, tad, seq, link, snapshot, checksum, stored, acknowledged=ack
            )
        return True

    def delta_base(
        self, txn: lmdb.Transaction, state: AtomState, tad: TAD, base_seq: int, base_name: int
    ) -> Record | str:
        """In ``txn``, whose atom record is ``state``: the latest checkpoint's record a
        delta from ``tad`` on base ``(tad.age, base_seq)`` named ``base_name`` composes
        onto (its own CRC checked), or why it may not (docs/DESIGN.md §6)."""
        guid = state.guid
        held = f"({state.checkpoint_age}, {state.checkpoint_seq})"
        if (state.checkpoint_age, state.checkpoint_seq) != (tad.age, base_seq):
            return f"its base ({tad.age}, {base_seq}) is not the latest checkpoint {held}"
        try:
            latest = self.record(txn, guid, state.checkpoint_no)
        except CheckpointDamagedError as exc:
            return f"the latest checkpoint {held} is damaged: {exc}"
        # The CRC-32 does not cover the link, and the window deletes slots by the
        # anchors links name: a link the window disagrees with is damage.
        link, anchor = latest.link, state.anchor_of(state.checkpoint_no)
        if link is not None and (link.anchor != anchor or latest.number - anchor != link.length):
            return (
                f"the latest checkpoint {held} is damaged: its link names anchor "
                f"#{link.anchor} and {link.length} deltas, the window anchor #{anchor}"
            )
        if latest.name != base_name:
            return (
                f"its base has checksum {base_name:08x}, the latest checkpoint {held} "
                f"{latest.name:08x}"
            )
        return latest

    def stage(self, txn: lmdb.Transaction, state: AtomState, packed: bytes) -> None:
        """Write a packed checkpoint into the slot after the latest, not yet the latest."""
        txn.put(checkpoint_key(state.guid, state.checkpoint_no + 1), packed, db=self._db)

    def staged(self, txn: lmdb.Transaction, state: AtomState, tad: TAD) -> Checkpoint:
        """The snapshot staged for the move to ``tad``, checked; MigrationError if none was."""
        number = state.checkpoint_no + 1
        staged = txn.get(checkpoint_key(state.guid, number), db=self._db)
        if staged is None:
            raise MigrationError(f"commit of atom {state.guid} to {tad}: no snapshot was staged")
        checked = self.read(txn, state, number)
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
        anchor: int | None = None,
        acknowledged: bool = True,
    ) -> AtomState:
        """The checkpoint in the next slot becomes the latest; ``anchor``: the slot of
        the whole record it composes from (None: it is a whole one).

        ``acknowledged``: its calls were promised durable (all but periodic
        checkpoints), so no fallback may go below it from now on.
        """
        number = state.checkpoint_no + 1
        anchors = (*state.anchors, number if anchor is None else anchor)
        anchors = anchors[-(KEEP_PREVIOUS_CHECKPOINTS + 1) :]
        if number > KEEP_PREVIOUS_CHECKPOINTS + 1:
            # The oldest kept checkpoint composes from its anchor: every slot below
            # that one is no longer needed (one slot, or a chain that was cut).
            self._delete_below(txn, state.guid, min(anchors[0], number - KEEP_PREVIOUS_CHECKPOINTS))
        state = replace(
            state,
            checkpoint_no=number,
            checkpoint_age=tad.age,
            checkpoint_seq=seq,
            checkpoint_generation=generation,
            durable_generation=generation if acknowledged else state.durable_generation,
            anchors=anchors,
        )
        self._table.put(txn, state)
        return state

    def _delete_below(self, txn: lmdb.Transaction, guid: str, keep_from: int) -> None:
        """Delete ``guid``'s slots numbered below ``keep_from``."""
        prefix = guid.encode() + b"/"
        cursor = txn.cursor(db=self._db)
        if not cursor.set_range(prefix):
            return
        while True:
            key = bytes(cursor.key())
            if not key.startswith(prefix) or int.from_bytes(key[len(prefix) :], "big") >= keep_from:
                return
            if not cursor.delete():
                return

    def record(self, txn: lmdb.Transaction, guid: str, number: int) -> Record:
        """Slot ``number``'s record, its CRC checked (CheckpointDamagedError if damaged)."""
        data = txn.get(checkpoint_key(guid, number), db=self._db)
        if data is None:
            raise CheckpointDamagedError(f"checkpoint #{number} of atom {guid} is missing")
        raw = bytes(data)
        known = self._records.get(raw)
        if known is not None and known.number == number:
            return known
        return self._records.keep(raw, unpack_record(guid, raw, number))

    def state(self, txn: lmdb.Transaction, guid: str, number: int) -> tuple[Record, State]:
        """Slot ``number``'s record and the state it holds, composed from its anchor when
        it is a delta: every record of the chain is checked, and a chain that does not
        compose is damaged (CheckpointDamagedError)."""
        last = self.record(txn, guid, number)
        chain = [last]
        while chain[-1].link is not None:
            link = chain[-1].link
            if chain[-1].number <= link.anchor:
                raise CheckpointDamagedError(
                    f"checkpoint #{chain[-1].number} of atom {guid} is damaged: it names "
                    f"anchor #{link.anchor}"
                )
            chain.append(self.record(txn, guid, chain[-1].number - 1))
        try:
            deltas = [decode_delta(part.data) for part in reversed(chain[:-1])]
            state = compose_chain(decode_state(chain[-1].data), deltas)
        except StorageError as exc:
            raise CheckpointDamagedError(
                f"checkpoint #{number} of atom {guid} is damaged: its chain from "
                f"#{chain[-1].number} does not compose: {exc}"
            ) from exc
        return last, state

    def read(self, txn: lmdb.Transaction, state: AtomState, number: int) -> Checkpoint:
        """Checkpoint ``number`` of ``state``'s atom as a whole snapshot, checked."""
        record = self.record(txn, state.guid, number)
        snapshot, checksum = record.data, record.checksum
        if record.link is not None:
            _, composed = self.state(txn, state.guid, number)
            snapshot = encode_state(composed)
            checksum = snapshot_checksum(snapshot)
        return Checkpoint(
            guid=state.guid,
            tad=record.tad,
            seq=record.seq,
            snapshot=snapshot,
            meta=state.meta,
            checksum=checksum,
            generation=record.generation,
        )

    def latest(self, txn: lmdb.Transaction, state: AtomState) -> Checkpoint:
        """The latest checkpoint of ``state``, checked (CheckpointDamagedError if damaged)."""
        return self.read(txn, state, state.checkpoint_no)

    def restorable(self, txn: lmdb.Transaction, state: AtomState) -> Checkpoint:
        """The latest good checkpoint of ``state`` that keeps every acknowledged call."""
        guid = state.guid
        damage: list[str] = []
        oldest = max(1, state.checkpoint_no - KEEP_PREVIOUS_CHECKPOINTS)
        for number in range(state.checkpoint_no, oldest - 1, -1):
            try:
                checkpoint = self.read(txn, state, number)
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
        oldest = max(1, state.checkpoint_no - KEEP_PREVIOUS_CHECKPOINTS)
        return [
            self.read(txn, state, number)
            for number in range(oldest, state.checkpoint_no + 1)
            if txn.get(checkpoint_key(state.guid, number), db=self._db) is not None
        ]

    def delete_all(self, txn: lmdb.Transaction, guid: str) -> None:
        """Delete every kept (and staged) checkpoint of ``guid``."""
        prefix = guid.encode() + b"/"
        cursor = txn.cursor(db=self._db)
        if cursor.set_range(prefix):
            while bytes(cursor.key()).startswith(prefix):
                if not cursor.delete():
                    break
