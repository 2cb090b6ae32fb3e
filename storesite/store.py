"""The storesite's durable state in LMDB (DESIGN.md §5 participant side, §6).

One :class:`AtomStore` per process owns one LMDB environment in a data
directory, guarded by a lock file so two storesite processes never share it.
It keeps three sub-databases:

- ``modules``: hex sha256 → module bytes (verified on put);
- ``atoms``: GUID → :class:`AtomState` (meta, location TAD, dormant flag, the
  next age to hand out, a pending move, the latest checkpoint's age and seq,
  the storesite the atom's home moved to);
- ``checkpoints``: GUID + internal counter → snapshot with its TAD and seq;
  the latest and the three before it are kept.

Every method is one LMDB transaction, durable when it returns, so the state
machine (register, checkpoint, prepare / commit / abort, passivate, activate,
recover, adopt, forget) never shows a half-done step. Operations that talk to
other processes (activation, recovery, moving home) live in
:mod:`storesite.service`, which serializes them per GUID.

Ages: a checkpoint is newer than another when its ``(age, seq)`` is greater.
``seq`` counts within one age: a node that receives an atom (move, activation,
recovery) starts counting again from 1, and the checkpoint the storesite
writes itself at that age (commit, activation) has seq 0.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import pathlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import lmdb
import msgpack

from hermesx.errors import HomeMovedError, MigrationError, NameNotFoundError, StorageError
from hermesx.identity import GUID, TAD
from hermesx.proto import hermesx_pb2 as pb

__all__ = ["KEEP_PREVIOUS_CHECKPOINTS", "AtomState", "AtomStore", "Checkpoint", "StoreStatus"]

log = logging.getLogger(__name__)

# Checkpoints kept besides the latest one, for an operator who needs to roll back.
KEEP_PREVIOUS_CHECKPOINTS = 3
# A move not committed within this long is off (sources time out well before).
PENDING_LEASE_S = 120.0
# Room for an atom at a node's 64 MiB memory cap plus its KV and its reply
# table (8 MiB), well under the wire's 256 MiB message limit.
DEFAULT_MAX_CHECKPOINT_BYTES = 192 * 2**20
DEFAULT_MAP_SIZE = 1 << 35  # 32 GiB of address space; the file grows only as used
LOCK_FILE = "storesite.lock"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One stored snapshot of an atom and where it was taken."""

    guid: str
    tad: TAD
    seq: int
    snapshot: bytes
    meta: pb.AtomMeta


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

    @property
    def meta(self) -> pb.AtomMeta:
        meta = pb.AtomMeta()
        meta.ParseFromString(self.meta_bytes)
        return meta

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
        )


@dataclass(frozen=True, slots=True)
class StoreStatus:
    atoms: int
    modules: int
    checkpoints: int


def module_hash(module: bytes) -> str:
    """The content address of a module: hex sha256 of its bytes."""
    return hashlib.sha256(module).hexdigest()


def _check_guid(guid: str) -> None:
    """Refuse text that is not a GUID before it becomes an LMDB key."""
    GUID.parse(guid)


def _checkpoint_key(guid: str, number: int) -> bytes:
    return guid.encode() + b"/" + number.to_bytes(8, "big")


def _pack_checkpoint(tad: TAD, seq: int, snapshot: bytes) -> bytes:
    packed: bytes = msgpack.packb([tad.node, tad.age, seq, snapshot], use_bin_type=True)
    return packed


class _DataDirLock:
    """An exclusive ``flock`` on the data dir, naming its holder for the error message."""

    def __init__(self, sid: str, data_dir: pathlib.Path) -> None:
        path = data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"data dir {data_dir} is not writable: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 256, 0).decode(errors="replace").split()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StorageError(f"cannot lock data dir {data_dir}: {exc.strerror}") from exc
            who = f"storesite {holder[0]} (pid {holder[1]})" if len(holder) >= 2 else "a storesite"
            raise StorageError(f"data dir {data_dir} is held by {who}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{sid} {os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            # Closing drops the flock; the stale content is harmless.
            os.close(self._fd)
            self._fd = -1


class AtomStore:
    """Durable records of the atoms homed at one storesite.

    ``data_dir`` is created when missing (its parent must exist). Opening a
    data dir another storesite process holds fails with a :class:`StorageError`
    naming the holder.
    """

    def __init__(
        self,
        sid: str,
        data_dir: pathlib.Path,
        *,
        max_checkpoint_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES,
        map_size: int = DEFAULT_MAP_SIZE,
    ) -> None:
        self.sid = sid
        self.data_dir = data_dir
        self.max_checkpoint_bytes = max_checkpoint_bytes
        if not data_dir.parent.is_dir():
            raise StorageError(
                f"cannot create data dir {data_dir}: parent {data_dir.parent} does not exist"
            )
        if data_dir.exists() and not data_dir.is_dir():
            raise StorageError(f"data dir {data_dir} is not a directory")
        try:
            data_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create data dir {data_dir}: {exc.strerror}") from exc
        if not os.access(data_dir, os.W_OK | os.X_OK):
            raise StorageError(f"data dir {data_dir} is not writable")
        self._lock = _DataDirLock(sid, data_dir)
        try:
            # sync/metasync stay on: a reply is sent only after the commit is on disk.
            self._env = lmdb.open(
                str(data_dir / "lmdb"),
                map_size=map_size,
                max_dbs=4,
                subdir=True,
                sync=True,
                metasync=True,
                max_readers=256,
            )
            self._modules = self._env.open_db(b"modules")
            self._atoms = self._env.open_db(b"atoms")
            self._checkpoints = self._env.open_db(b"checkpoints")
        except lmdb.Error as exc:
            self._lock.release()
            raise StorageError(f"cannot open storesite {sid} data in {data_dir}: {exc}") from exc
        self._closed = False

    # ------------------------------------------------------------------ life

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()
            self._lock.release()

    def __enter__(self) -> AtomStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- modules

    def put_module(self, module: bytes, expected_hash: str | None = None) -> str:
        """Store module bytes under their hash and return it (idempotent)."""
        digest = module_hash(module)
        if expected_hash is not None and expected_hash != digest:
            raise StorageError(
                f"module bytes hash to {digest[:16]}…, not the announced {expected_hash[:16]}…"
            )
        try:
            with self._env.begin(write=True, db=self._modules) as txn:
                txn.put(digest.encode(), module, overwrite=False)
        except lmdb.Error as exc:
            raise StorageError(f"storesite {self.sid}: cannot store module: {exc}") from exc
        return digest

    def get_module(self, digest: str) -> bytes:
        try:
            with self._env.begin(db=self._modules) as txn:
                data = txn.get(digest.encode())
        except lmdb.Error as exc:
            raise StorageError(f"storesite {self.sid}: cannot read module: {exc}") from exc
        if data is None:
            raise NameNotFoundError(f"storesite {self.sid} has no module {digest}")
        return bytes(data)

    def has_module(self, digest: str) -> bool:
        with self._env.begin(db=self._modules) as txn:
            return txn.get(digest.encode()) is not None

    # ----------------------------------------------------------------- atoms

    def register_atom(self, guid: str, meta: pb.AtomMeta, tad: TAD, snapshot: bytes) -> AtomState:
        """Record a new atom homed here at ``tad`` with its first checkpoint."""
        home = GUID.parse(guid).home
        if home != self.sid:
            raise StorageError(f"atom {guid} is homed at storesite {home}, not at {self.sid}")
        self._check_size(guid, snapshot)
        state = AtomState(
            guid=guid,
            meta_bytes=meta.SerializeToString(),
            location=tad,
            dormant=False,
            next_age=tad.age + 1,
            pending=None,
            checkpoint_age=tad.age,
            checkpoint_seq=0,
            checkpoint_no=0,
            forwarded_to="",
            adopted=False,
        )
        with self._write(guid) as txn:
            if txn.get(guid.encode(), db=self._atoms) is not None:
                raise StorageError(f"atom {guid} is already registered at storesite {self.sid}")
            state = self._store_checkpoint(txn, state, tad, 0, snapshot)
        log.info("registered atom %s at %s", guid, tad)
        return state

    def adopt_atom(
        self,
        guid: str,
        meta: pb.AtomMeta,
        tad: TAD,
        seq: int,
        snapshot: bytes,
        *,
        dormant: bool,
        next_age: int | None = None,
    ) -> AtomState:
        """Take over an atom whose home moves here from another storesite."""
        self._check_size(guid, snapshot)
        with self._write(guid) as txn:
            raw = txn.get(guid.encode(), db=self._atoms)
            if raw is not None:
                old = AtomState.from_bytes(bytes(raw))
                if not old.forwarded_to:
                    raise StorageError(
                        f"atom {guid} is already homed at storesite {self.sid}; cannot adopt it"
                    )
                # The atom is coming back: its old forwarding record goes.
                self._delete_checkpoints(txn, guid)
            state = AtomState(
                guid=guid,
                meta_bytes=meta.SerializeToString(),
                location=tad,
                dormant=dormant,
                next_age=max(tad.age + 1, next_age or 0),
                pending=None,
                checkpoint_age=tad.age,
                checkpoint_seq=seq,
                checkpoint_no=0,
                forwarded_to="",
                adopted=True,
            )
            state = self._store_checkpoint(txn, state, tad, seq, snapshot)
        log.info("adopted atom %s at %s (dormant=%s)", guid, tad, dormant)
        return state

    def get(self, guid: str) -> AtomState:
        """The record of ``guid`` (also for atoms whose home moved away)."""
        _check_guid(guid)
        with self._env.begin(db=self._atoms) as txn:
            raw = txn.get(guid.encode())
        if raw is None:
            raise NameNotFoundError(f"storesite {self.sid} has no atom {guid}")
        return AtomState.from_bytes(bytes(raw))

    def atoms(self) -> Iterator[AtomState]:
        """Every record, forwarded ones included, in GUID order."""
        with self._env.begin(db=self._atoms) as txn:
            records = [AtomState.from_bytes(bytes(v)) for _, v in txn.cursor()]
        yield from records

    def forget(self, guid: str) -> None:
        """Delete every record of ``guid`` (a create that failed half-way)."""
        with self._write(guid) as txn:
            self._delete_checkpoints(txn, guid)
            txn.delete(guid.encode(), db=self._atoms)
        log.info("forgot atom %s", guid)

    def status(self) -> StoreStatus:
        with self._env.begin() as txn:
            atoms = txn.stat(self._atoms)["entries"]
            modules = txn.stat(self._modules)["entries"]
            checkpoints = txn.stat(self._checkpoints)["entries"]
        return StoreStatus(atoms=atoms, modules=modules, checkpoints=checkpoints)

    # ----------------------------------------------------------- checkpoints

    def put_checkpoint(self, guid: str, tad: TAD, seq: int, snapshot: bytes) -> bool:
        """Store a checkpoint sent by the node running the atom.

        Returns False (and stores nothing) when an equal or newer checkpoint
        of that age is already stored: checkpoints may arrive out of order.
        A checkpoint from an older location is refused: that node no longer
        holds the atom and must not overwrite the newer location's state.
        """
        self._check_size(guid, snapshot)
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            self._check_current(state, tad, "checkpoint")
            if state.pending is not None:
                raise MigrationError(
                    f"checkpoint of atom {guid} from {tad} refused: it is moving to "
                    f"{state.pending.node}"
                )
            if tad.age == state.checkpoint_age and seq <= state.checkpoint_seq:
                log.debug("ignored checkpoint %s seq %s of %s: not newer", tad, seq, guid)
                return False
            self._store_checkpoint(txn, state, tad, seq, snapshot)
        return True

    def latest_checkpoint(self, guid: str) -> Checkpoint:
        with self._env.begin() as txn:
            raw = txn.get(guid.encode(), db=self._atoms)
            if raw is None:
                raise NameNotFoundError(f"storesite {self.sid} has no atom {guid}")
            state = AtomState.from_bytes(bytes(raw))
            data = txn.get(_checkpoint_key(guid, state.checkpoint_no), db=self._checkpoints)
        if data is None:
            raise StorageError(f"storesite {self.sid} lost the latest checkpoint of atom {guid}")
        return self._unpack_checkpoint(state, bytes(data))

    def checkpoint_history(self, guid: str) -> list[Checkpoint]:
        """Kept checkpoints of ``guid``, oldest first."""
        state = self.get(guid)
        prefix = guid.encode() + b"/"
        found: list[Checkpoint] = []
        with self._env.begin(db=self._checkpoints) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    if int.from_bytes(key[len(prefix) :], "big") > state.checkpoint_no:
                        break  # a staged snapshot of a pending move, not a checkpoint yet
                    found.append(self._unpack_checkpoint(state, bytes(value)))
        return found

    # ----------------------------------------------- migration (participant)

    def prepare(self, guid: str, source: TAD, destination: str) -> int:
        """Reserve the age of a move from ``source`` to ``destination``.

        The age advances on every attempt, even one that is later aborted,
        so no two attempts ever share an age.
        """
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
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
            self._put_state(txn, state)
        log.info("prepared move of %s from %s to %s@%s", guid, source, destination, age)
        return age

    def stage(self, guid: str, tad: TAD, snapshot: bytes) -> None:
        """Keep the snapshot of the pending move to ``tad`` for its COMMIT.

        It goes straight into the next checkpoint slot, so COMMIT only has to
        make it current (no 16 MiB copy while calls are held). Nothing else
        writes checkpoints of an atom while its move is pending.
        """
        self._check_size(guid, snapshot)
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            self._check_pending(state, tad, "staging")
            txn.put(
                _checkpoint_key(guid, state.checkpoint_no + 1),
                _pack_checkpoint(tad, 0, snapshot),
                db=self._checkpoints,
            )

    def commit(self, guid: str, tad: TAD, snapshot: bytes) -> AtomState:
        """Complete the pending move: ``tad`` becomes the location, the snapshot the checkpoint.

        An empty ``snapshot`` means the one staged for this move.
        """
        self._check_size(guid, snapshot)
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            self._check_pending(state, tad, "commit")
            state = replace(state, location=tad, pending=None)
            if snapshot:
                state = self._store_checkpoint(txn, state, tad, 0, snapshot)
            else:
                staged = txn.get(
                    _checkpoint_key(guid, state.checkpoint_no + 1), db=self._checkpoints
                )
                if staged is None or self._unpack_checkpoint(state, bytes(staged)).tad != tad:
                    raise MigrationError(f"commit of atom {guid} to {tad}: no snapshot was staged")
                state = self._advance_checkpoint(txn, state, tad, 0)
        log.info("committed move of %s to %s", guid, tad)
        return state

    def abort(self, guid: str, age: int) -> bool:
        """Drop the pending move of that age; the location stays. Idempotent."""
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            if state.pending is None or state.pending.age != age:
                return False
            self._put_state(txn, replace(state, pending=None))
            # A staged snapshot in the next slot is simply overwritten later.
        log.info("aborted move of %s (age %s)", guid, age)
        return True

    def passivated(self, guid: str, tad: TAD, snapshot: bytes) -> AtomState:
        """The node at ``tad`` dropped the atom after a final checkpoint: it is dormant."""
        self._check_size(guid, snapshot)
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            self._check_current(state, tad, "passivation")
            if state.pending is not None:
                raise MigrationError(
                    f"atom {guid} is moving to {state.pending.node}; it cannot be passivated"
                )
            seq = state.checkpoint_seq + 1 if state.checkpoint_age == tad.age else 1
            state = replace(state, dormant=True)
            state = self._store_checkpoint(txn, state, tad, seq, snapshot)
        log.info("atom %s is dormant (last at %s)", guid, tad)
        return state

    # ------------------------------------------------ activation and recovery

    def reserve_age(self, guid: str) -> tuple[int, Checkpoint]:
        """Hand out the next age for an activation or recovery attempt.

        Durable before the node is asked, so a failed attempt's age is never
        reused.
        """
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            age = state.next_age
            state = replace(state, next_age=age + 1)
            self._put_state(txn, state)
            data = txn.get(_checkpoint_key(guid, state.checkpoint_no), db=self._checkpoints)
        if data is None:
            raise StorageError(f"storesite {self.sid} lost the latest checkpoint of atom {guid}")
        return age, self._unpack_checkpoint(state, bytes(data))

    def activated(self, guid: str, tad: TAD) -> AtomState:
        """The atom now runs at ``tad`` (after activation or recovery); any pending move is gone."""
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            if tad.age < state.location.age:
                raise MigrationError(
                    f"activation of atom {guid} at {tad} is older than its location "
                    f"{state.location}"
                )
            state = replace(state, location=tad, dormant=False, pending=None)
            self._put_state(txn, state)
        return state

    def mark_dormant(self, guid: str) -> AtomState:
        """No node could take the atom: it waits, checkpointed, for the next Locate."""
        with self._write(guid) as txn:
            state = replace(self._live_state(txn, guid), dormant=True, pending=None)
            self._put_state(txn, state)
        return state

    def set_forwarded(self, guid: str, storesite: str) -> AtomState:
        """The atom's home moved to ``storesite``; keep only a forwarding record."""
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            self._delete_checkpoints(txn, guid)
            state = replace(state, forwarded_to=storesite, pending=None, checkpoint_no=0)
            self._put_state(txn, state)
        return state

    # -------------------------------------------------------------- internal

    def _write(self, guid: str) -> _WriteTxn:
        return _WriteTxn(self, guid)

    def _live_state(self, txn: lmdb.Transaction, guid: str) -> AtomState:
        raw = txn.get(guid.encode(), db=self._atoms)
        if raw is None:
            raise NameNotFoundError(f"storesite {self.sid} has no atom {guid}")
        state = AtomState.from_bytes(bytes(raw))
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

    def _check_current(self, state: AtomState, tad: TAD, what: str) -> None:
        if tad.age < state.location.age:
            raise MigrationError(
                f"stale {what} of atom {state.guid} from {tad}: the atom is at {state.location} now"
            )
        if tad != state.location:
            raise MigrationError(
                f"{what} of atom {state.guid} from {tad} does not match its location "
                f"{state.location}"
            )

    def _check_size(self, guid: str, snapshot: bytes) -> None:
        if len(snapshot) > self.max_checkpoint_bytes:
            raise StorageError(
                f"checkpoint of atom {guid} is {len(snapshot)} bytes, over the storesite "
                f"{self.sid} limit of {self.max_checkpoint_bytes} bytes"
            )

    def _put_state(self, txn: lmdb.Transaction, state: AtomState) -> None:
        txn.put(state.guid.encode(), state.to_bytes(), db=self._atoms)

    def _check_pending(self, state: AtomState, tad: TAD, what: str) -> None:
        if state.pending is None:
            raise MigrationError(f"no move of atom {state.guid} is pending ({what} of {tad})")
        if state.pending != tad:
            raise MigrationError(
                f"{what} of atom {state.guid} to {tad} does not match the pending move "
                f"to {state.pending}"
            )

    def _store_checkpoint(
        self, txn: lmdb.Transaction, state: AtomState, tad: TAD, seq: int, snapshot: bytes
    ) -> AtomState:
        return self._store_packed_checkpoint(
            txn, state, tad, seq, _pack_checkpoint(tad, seq, snapshot)
        )

    def _store_packed_checkpoint(
        self, txn: lmdb.Transaction, state: AtomState, tad: TAD, seq: int, packed: bytes
    ) -> AtomState:
        txn.put(_checkpoint_key(state.guid, state.checkpoint_no + 1), packed, db=self._checkpoints)
        return self._advance_checkpoint(txn, state, tad, seq)

    def _advance_checkpoint(
        self, txn: lmdb.Transaction, state: AtomState, tad: TAD, seq: int
    ) -> AtomState:
        """The checkpoint in the next slot becomes the latest."""
        number = state.checkpoint_no + 1
        # Numbers are consecutive, so exactly one checkpoint falls out of the window.
        expired = number - KEEP_PREVIOUS_CHECKPOINTS - 1
        if expired >= 1:
            txn.delete(_checkpoint_key(state.guid, expired), db=self._checkpoints)
        state = replace(state, checkpoint_no=number, checkpoint_age=tad.age, checkpoint_seq=seq)
        self._put_state(txn, state)
        return state

    def _delete_checkpoints(self, txn: lmdb.Transaction, guid: str) -> None:
        prefix = guid.encode() + b"/"
        cursor = txn.cursor(db=self._checkpoints)
        if cursor.set_range(prefix):
            while bytes(cursor.key()).startswith(prefix):
                if not cursor.delete():
                    break

    @staticmethod
    def _unpack_checkpoint(state: AtomState, data: bytes) -> Checkpoint:
        node, age, seq, snapshot = msgpack.unpackb(data, raw=False)
        return Checkpoint(
            guid=state.guid, tad=TAD(node, age), seq=seq, snapshot=snapshot, meta=state.meta
        )


class _WriteTxn:
    """A durable write transaction that turns LMDB failures into StorageError."""

    def __init__(self, store: AtomStore, guid: str) -> None:
        _check_guid(guid)
        self._store = store
        self._guid = guid
        self._txn: lmdb.Transaction | None = None

    def __enter__(self) -> lmdb.Transaction:
        try:
            self._txn = self._store._env.begin(write=True)
        except lmdb.Error as exc:
            raise StorageError(
                f"storesite {self._store.sid}: cannot write records of atom {self._guid}: {exc}"
            ) from exc
        return self._txn

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        assert self._txn is not None
        if exc_type is not None:
            self._txn.abort()
            if isinstance(exc, lmdb.Error):
                raise StorageError(
                    f"storesite {self._store.sid}: cannot write records of atom {self._guid}: {exc}"
                ) from exc
            return
        try:
            self._txn.commit()
        except lmdb.Error as error:
            raise StorageError(
                f"storesite {self._store.sid}: cannot write records of atom {self._guid}: {error}"
            ) from error
