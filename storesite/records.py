"""The storesite's records and how they are kept in LMDB (docs/DESIGN.md §5, §6).

The values: :class:`AtomState` (one atom's location record, everything but
snapshot bytes, packed with msgpack under its GUID), :class:`Checkpoint` (one
stored snapshot and where it was taken) and :class:`Provenance` (what a
writer says of the snapshot it sends: its CRC-32 and the generation it
holds). :class:`AtomTable` reads and writes atom records inside the durable
write transactions of a :class:`~storesite.environment.StoreEnvironment`, and
holds the checks every step of the record's state machine shares: the atom
is homed here, the writer is its current location, a pending move matches,
the snapshot fits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import lmdb
import msgpack

from hermesx.core.errors import (
    HomeMovedError,
    MigrationError,
    NameNotFoundError,
    StorageError,
)
from hermesx.core.identity import TAD
from hermesx.core.snapshot import snapshot_checksum, verify_checksum
from hermesx.rpc.proto import hermesx_pb2 as pb

if TYPE_CHECKING:
    from storesite.environment import StoreEnvironment, WriteTxn

__all__ = [
    "GENERATION_UNKNOWN",
    "KEEP_PREVIOUS_CHECKPOINTS",
    "UNSTATED",
    "AtomState",
    "AtomTable",
    "Checkpoint",
    "ParsedRecords",
    "Provenance",
    "StoreStatus",
]

log = logging.getLogger(__name__)

# Checkpoints kept besides the latest one, for an operator who needs to roll back.
KEEP_PREVIOUS_CHECKPOINTS = 3
# A move not committed within this long is off (sources time out well before).
PENDING_LEASE_S = 120.0
# A generation nobody told us (an older writer): never a reason to fall back.
GENERATION_UNKNOWN = -1
# Records kept parsed by their bytes (ParsedRecords): an atom record (~0.5 KB) or a
# delta record (one leaf page) per busy atom; none over 4 KiB, at most 1,024 (~4 MiB).
PARSED_RECORDS = 1024
PARSED_RECORD_BYTES = 4096

_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Provenance:
    """What a writer says of the snapshot it sends; None (or ""): it did not say.

    ``checksum`` is the snapshot's CRC-32
    (:func:`hermesx.core.snapshot.snapshot_checksum`), ``generation`` the
    number of calls the atom had completed when it was taken, and
    ``incarnation`` the incarnation of the TAD's node that holds the atom
    with that snapshot (docs/DESIGN.md §5): a creating node, the destination that
    staged a move's copy. A ``periodic`` checkpoint promised nobody that its
    calls are durable.
    """

    checksum: int | None = None
    generation: int | None = None
    incarnation: str = ""
    periodic: bool = False

    @classmethod
    def of(
        cls,
        request: pb.RegisterAtomRequest
        | pb.CheckpointRequest
        | pb.CommitRequest
        | pb.PassivatedRequest
        | pb.CheckpointData,
    ) -> Provenance:
        """The provenance a request carries (an unset field: not said)."""
        holder = (
            request.incarnation
            if isinstance(request, pb.RegisterAtomRequest | pb.CommitRequest | pb.CheckpointData)
            else ""
        )
        return cls(
            checksum=request.checksum if request.HasField("checksum") else None,
            generation=request.generation if request.HasField("generation") else None,
            incarnation=holder,
            periodic=isinstance(request, pb.CheckpointRequest) and request.periodic,
        )

    @property
    def stored_generation(self) -> int:
        """The generation as stored: GENERATION_UNKNOWN when the writer did not say."""
        return GENERATION_UNKNOWN if self.generation is None else self.generation

    def arrived(self, snapshot: bytes, what: str) -> int:
        """The checksum of a snapshot that just arrived; StorageError if it came damaged.

        A writer that sends no checksum (one older than checksums) gets one
        computed here, so every stored checkpoint carries one.
        """
        if self.checksum is None:
            return snapshot_checksum(snapshot)
        verify_checksum(snapshot, self.checksum, what)
        return self.checksum


# A writer that says nothing of its snapshot.
UNSTATED = Provenance()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One stored snapshot of an atom and where it was taken."""

    guid: str
    tad: TAD
    seq: int
    snapshot: bytes
    meta: pb.AtomMeta
    checksum: int = 0
    generation: int = GENERATION_UNKNOWN


@dataclass(frozen=True, slots=True)
class AtomState:
    """The location record of one atom (everything but snapshot bytes)."""

    guid: str
    meta_bytes: bytes
    location: TAD
    dormant: bool
    next_age: int
    # The reserved destination and age of a move between PREPARE and COMMIT/ABORT.
    pending: TAD | None
    checkpoint_age: int
    checkpoint_seq: int
    # Internal counter naming the latest checkpoint's key; not the wire seq.
    checkpoint_no: int
    forwarded_to: str
    adopted: bool
    # Wall-clock time of PREPARE: a pending move is a lease, not a lock.
    pending_since: float = 0.0
    # Every call up to this generation was acknowledged as durable (it is the
    # generation of the latest checkpoint that was not a periodic one), so no
    # fallback from a damaged checkpoint may go below it.
    durable_generation: int = GENERATION_UNKNOWN
    # The generation the latest checkpoint holds.
    checkpoint_generation: int = GENERATION_UNKNOWN
    # The incarnation of location.node that holds the atom (docs/DESIGN.md §5);
    # "" when unknown (records of older stores): reconciled with the live node.
    incarnation: str = ""
    # The anchor (storesite.chain) of each slot of the window, oldest first, ending at
    # checkpoint_no: a slot is deleted once no kept checkpoint composes from it.
    anchors: tuple[int, ...] = ()

    @classmethod
    def first(
        cls,
        guid: str,
        meta: pb.AtomMeta,
        tad: TAD,
        *,
        seq: int = 0,
        dormant: bool = False,
        next_age: int = 0,
        adopted: bool = False,
        incarnation: str = "",
    ) -> AtomState:
        """The record of an atom new to this store, at ``tad``, before its first checkpoint."""
        return cls(
            guid=guid,
            meta_bytes=meta.SerializeToString(),
            location=tad,
            dormant=dormant,
            next_age=max(tad.age + 1, next_age),
            pending=None,
            checkpoint_age=tad.age,
            checkpoint_seq=seq,
            checkpoint_no=0,
            forwarded_to="",
            adopted=adopted,
            incarnation=incarnation,
        )

    @property
    def meta(self) -> pb.AtomMeta:
        meta = pb.AtomMeta()
        meta.ParseFromString(self.meta_bytes)
        return meta

    def anchor_of(self, number: int) -> int:
        """The anchor of kept slot ``number``: a slot the window does not name (a
        record of an older store) is a whole one, its own anchor."""
        index = len(self.anchors) - 1 - (self.checkpoint_no - number)
        return self.anchors[index] if 0 <= index < len(self.anchors) else number

    @property
    def checkpoints(self) -> int:
        """How many checkpoints are kept for this atom."""
        return min(self.checkpoint_no, KEEP_PREVIOUS_CHECKPOINTS + 1)

    def to_bytes(self) -> bytes:
        pending = None if self.pending is None else [self.pending.node, self.pending.age]
        packed: bytes = msgpack.packb(
            {
                "guid": self.guid,
                "meta": self.meta_bytes,
                "loc": [self.location.node, self.location.age],
                "dormant": self.dormant,
                "next_age": self.next_age,
                "pending": pending,
                "ck_age": self.checkpoint_age,
                "ck_seq": self.checkpoint_seq,
                "ck_no": self.checkpoint_no,
                "fwd": self.forwarded_to,
                "adopted": self.adopted,
                "pending_since": self.pending_since,
                "durable_gen": self.durable_generation,
                "ck_gen": self.checkpoint_generation,
                "inc": self.incarnation,
                "ck_anchors": list(self.anchors),
            },
            use_bin_type=True,
        )
        return packed

    @classmethod
    def from_bytes(cls, data: bytes) -> AtomState:
        d: dict[str, Any] = msgpack.unpackb(data, raw=False)
        pending = d["pending"]
        return cls(
            guid=d["guid"],
            meta_bytes=d["meta"],
            location=TAD(d["loc"][0], d["loc"][1]),
            dormant=d["dormant"],
            next_age=d["next_age"],
            pending=None if pending is None else TAD(pending[0], pending[1]),
            checkpoint_age=d["ck_age"],
            checkpoint_seq=d["ck_seq"],
            checkpoint_no=d["ck_no"],
            forwarded_to=d["fwd"],
            adopted=d["adopted"],
            pending_since=float(d.get("pending_since", 0.0)),
            durable_generation=int(d.get("durable_gen", GENERATION_UNKNOWN)),
            checkpoint_generation=int(d.get("ck_gen", GENERATION_UNKNOWN)),
            incarnation=str(d.get("inc", "")),
            anchors=tuple(int(a) for a in d.get("ck_anchors", ())),
        )


@dataclass(frozen=True, slots=True)
class StoreStatus:
    atoms: int
    modules: int
    checkpoints: int
    # Since the process started (docs/DESIGN.md §6): checkpoints nodes sent that
    # were stored, of them deltas, and the group commits that wrote them.
    checkpoints_written: int = 0
    deltas_written: int = 0
    group_commits: int = 0


def checkpoint_key(guid: str, number: int) -> bytes:
    """The key of checkpoint slot ``number`` of ``guid`` (slots of one atom sort together)."""
    return guid.encode() + b"/" + number.to_bytes(8, "big")


def parse_state(sid: str, guid: str, raw: bytes) -> AtomState:
    """The record of ``guid`` read from ``raw``; StorageError naming it when damaged."""
    try:
        return AtomState.from_bytes(raw)
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
        raise StorageError(f"storesite {sid}: the record of atom {guid} is damaged: {exc}") from exc


def check_current(state: AtomState, tad: TAD, what: str) -> None:
    """Refuse a write from anywhere but the atom's current location."""
    if tad.age < state.location.age:
        raise MigrationError(
            f"stale {what} of atom {state.guid} from {tad}: the atom is at {state.location} now"
        )
    if tad != state.location:
        raise MigrationError(
            f"{what} of atom {state.guid} from {tad} does not match its location {state.location}"
        )


def check_pending(state: AtomState, tad: TAD, what: str) -> None:
    """Refuse a step of a move to ``tad`` unless that move is the pending one."""
    if state.pending is None:
        raise MigrationError(f"no move of atom {state.guid} is pending ({what} of {tad})")
    if state.pending != tad:
        raise MigrationError(
            f"{what} of atom {state.guid} to {tad} does not match the pending move "
            f"to {state.pending}"
        )


class ParsedRecords(Generic[_R]):
    """Small records parsed (and checked) from stored bytes, kept by those bytes.

    A durable call's checkpoint reads back the records the checkpoint before it
    wrote — the atom's record, the latest checkpoint's — and parsing them costs
    more than finding them. A record is immutable, so bytes equal to those of
    one kept are that record; damaged bytes are other bytes, parsed and checked
    anew. Bounded: records of at most :data:`PARSED_RECORD_BYTES`, at most
    :data:`PARSED_RECORDS` of them (all dropped when full).
    """

    def __init__(self) -> None:
        self._kept: dict[bytes, _R] = {}

    def get(self, data: bytes) -> _R | None:
        return self._kept.get(data)

    def keep(self, data: bytes, record: _R) -> _R:
        """``record``, kept as what ``data`` holds (written, or read and checked)."""
        if len(data) <= PARSED_RECORD_BYTES:
            if len(self._kept) >= PARSED_RECORDS:
                self._kept.clear()
            self._kept[data] = record
        return record


class AtomTable:
    """The ``atoms`` sub-database: one :class:`AtomState` per GUID."""

    def __init__(self, env: StoreEnvironment, max_checkpoint_bytes: int) -> None:
        self.env = env
        self.sid = env.sid
        self.max_checkpoint_bytes = max_checkpoint_bytes
        self._parsed: ParsedRecords[AtomState] = ParsedRecords()

    def write(self, guid: str) -> WriteTxn:
        """A durable write transaction on ``guid``'s records."""
        return self.env.write(guid)

    def find(self, txn: lmdb.Transaction, guid: str) -> AtomState:
        """The record of ``guid`` (also of an atom whose home moved away)."""
        raw = txn.get(guid.encode(), db=self.env.atoms)
        if raw is None:
            raise NameNotFoundError(f"storesite {self.sid} has no atom {guid}")
        data = bytes(raw)
        state = self._parsed.get(data)
        if state is None:
            state = self._parsed.keep(data, parse_state(self.sid, guid, data))
        return state

    def exists(self, txn: lmdb.Transaction, guid: str) -> AtomState | None:
        """The record of ``guid`` when there is one, read as it is."""
        raw = txn.get(guid.encode(), db=self.env.atoms)
        return None if raw is None else AtomState.from_bytes(bytes(raw))

    def live(self, txn: lmdb.Transaction, guid: str) -> AtomState:
        """The record of an atom homed here, with an expired pending move dropped."""
        state = self.find(txn, guid)
        if state.pending is not None and time.time() - state.pending_since > PENDING_LEASE_S:
            # Its coordinator never committed nor aborted (it died, or its
            # abort was lost): the move is off and the atom stays where it is.
            log.warning("move of %s to %s expired unfinished", guid, state.pending)
            state = replace(state, pending=None)
        if state.forwarded_to:
            raise HomeMovedError(
                f"atom {guid} is now homed at storesite {state.forwarded_to}, not {self.sid}"
            )
        return state

    def put(self, txn: lmdb.Transaction, state: AtomState) -> None:
        data = state.to_bytes()
        txn.put(state.guid.encode(), data, db=self.env.atoms)
        self._parsed.keep(data, state)

    def delete(self, txn: lmdb.Transaction, guid: str) -> None:
        txn.delete(guid.encode(), db=self.env.atoms)

    def current(self, txn: lmdb.Transaction, guid: str, tad: TAD, what: str) -> AtomState:
        """The live record of ``guid``, refusing a ``what`` from anywhere but its location."""
        state = self.live(txn, guid)
        check_current(state, tad, what)
        return state

    def arriving(self, guid: str, snapshot: bytes, check: Provenance, what: str) -> int:
        """The checksum of a snapshot that arrives: refused when too big or damaged."""
        self.check_size(guid, snapshot)
        return check.arrived(snapshot, what)

    def check_size(self, guid: str, snapshot: bytes) -> None:
        """Refuse a snapshot over this storesite's limit."""
        if len(snapshot) > self.max_checkpoint_bytes:
            raise StorageError(
                f"checkpoint of atom {guid} is {len(snapshot)} bytes, over the storesite "
                f"{self.sid} limit of {self.max_checkpoint_bytes} bytes"
            )
