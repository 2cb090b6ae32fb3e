"""The storesite's durable state in LMDB (DESIGN.md §5 participant side, §6).

One :class:`AtomStore` per process owns one LMDB environment in a data
directory, guarded by a lock file so two storesite processes never share it.
It keeps three sub-databases:

- ``modules``: hex sha256 → module bytes (verified on put);
- ``atoms``: GUID → :class:`AtomState` (meta, location TAD and the node
  incarnation it names, dormant flag, the next age to hand out, a pending
  move, the latest checkpoint's age and seq, the storesite the atom's home
  moved to);
- ``checkpoints``: GUID + internal counter → snapshot with its TAD, seq,
  checksum and generation; the latest and the three before it are kept;
- ``store``: who the store belongs to (storesite id) and its format.

Every method is one LMDB transaction, durable when it returns, so the state
machine (register, checkpoint, prepare / commit / abort, passivate, activate,
recover, adopt, forget) never shows a half-done step. Operations that talk to
other processes (activation, recovery, moving home) live in
:mod:`storesite.service`, which serializes them per GUID.

Ages: a checkpoint is newer than another when its ``(age, seq)`` is greater.
``seq`` counts within one age: a node that receives an atom (move, activation,
recovery) starts counting again from 1, and the checkpoint the storesite
writes itself at that age (commit, activation) has seq 0. A checkpoint older
than the one held is never stored over it.

Damage (DESIGN.md §6): every checkpoint carries the CRC-32 of its snapshot
(:func:`hermesx.core.snapshot.snapshot_checksum`), checked when it arrives and
every time it is read back. A damaged checkpoint is never handed out. The
newest good one kept is used instead only when it holds every call that was
acknowledged as durable: each checkpoint records the atom's generation (calls
completed) and the atom record the generation of the latest checkpoint
written, which every earlier caller was told is durable. Otherwise the read
fails with a StorageError naming the atom and the damage.

Opening (:class:`AtomStore`): the store must exist, belong to this storesite
id and be whole, unless ``init`` asks for a new one; see :func:`check_lmdb_file`
for how a truncated file is found before LMDB maps it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import pathlib
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import lmdb
import msgpack

from hermesx.core.errors import (
    CheckpointDamagedError,
    HomeMovedError,
    MigrationError,
    NameNotFoundError,
    StorageError,
)
from hermesx.core.files import DIR_MODE, FILE_MODE, private_dir
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import snapshot_checksum, verify_checksum
from hermesx.rpc.proto import hermesx_pb2 as pb

__all__ = [
    "GENERATION_UNKNOWN",
    "KEEP_PREVIOUS_CHECKPOINTS",
    "AtomState",
    "AtomStore",
    "Checkpoint",
    "StoreStatus",
    "check_lmdb_file",
]

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
LMDB_DIR = "lmdb"
DATA_FILE = "data.mdb"
# Format 2: checkpoints carry a checksum and a generation; the store names its storesite.
STORE_FORMAT = 2
# A generation nobody told us (an older writer): never a reason to fall back.
GENERATION_UNKNOWN = -1


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
    # The incarnation of location.node that holds the atom (DESIGN.md §5);
    # "" when unknown (records of older stores): reconciled with the live node.
    incarnation: str = ""

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
                "durable_gen": self.durable_generation,
                "ck_gen": self.checkpoint_generation,
                "inc": self.incarnation,
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


def _pack_checkpoint(tad: TAD, seq: int, snapshot: bytes, checksum: int, generation: int) -> bytes:
    packed: bytes = msgpack.packb(
        [tad.node, tad.age, seq, snapshot, checksum, generation], use_bin_type=True
    )
    return packed


def _arrived(snapshot: bytes, checksum: int | None, what: str) -> int:
    """The checksum of a snapshot that just arrived; StorageError if it came damaged.

    A writer that sends no checksum (one older than checksums) gets one
    computed here, so every stored checkpoint carries one.
    """
    if checksum is None:
        return snapshot_checksum(snapshot)
    verify_checksum(snapshot, checksum, what)
    return checksum


def _generation(generation: int | None) -> int:
    return GENERATION_UNKNOWN if generation is None else generation


# LMDB 0.9's meta page (lmdb.h / mdb.c, 64-bit): a 16-byte page header
# (pgno, pad, flags, lower/upper), then MDB_meta: magic, version, address,
# mapsize, two MDB_db records of 48 bytes (the first one's pad holds the page
# size), the last used page number and the transaction id.
_PAGE_HEADER = struct.Struct("<QHH4x")
_META = struct.Struct("<IIQQI44x48xQQ")
_P_META = 0x08
_LMDB_MAGIC = 0xBEEFC0DE
_LMDB_VERSION = 1


def check_lmdb_file(path: pathlib.Path) -> str:
    """Why LMDB data file ``path`` cannot be opened safely; "" when it can.

    LMDB maps the file and reads its pages straight from memory, so a page
    past the end of a truncated file is a SIGBUS, not an error. This reads
    both meta pages with plain reads (never mapping the file), takes the
    newer one as LMDB does, and checks that the file holds every page up to
    that meta page's last page number. A file cut anywhere, or whose meta
    pages are not LMDB's, is refused before it is mapped.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_PAGE_HEADER.size + _META.size)
            if len(head) < _PAGE_HEADER.size + _META.size:
                return f"it is {size} bytes, too short to hold LMDB's meta pages"
            page_size = _META.unpack_from(head, _PAGE_HEADER.size)[4]
            if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
                return f"its first meta page names a page size of {page_size}"
            if size < 2 * page_size:
                return f"it is {size} bytes, too short to hold two {page_size}-byte meta pages"
            f.seek(page_size)
            second = f.read(_PAGE_HEADER.size + _META.size)
    except OSError as exc:
        return f"it cannot be read: {exc.strerror}"
    metas: list[tuple[int, int]] = []  # (txnid, last page)
    for number, raw in enumerate((head, second)):
        pgno, _pad, flags = _PAGE_HEADER.unpack_from(raw)
        magic, version, _addr, _mapsize, _psize, last_page, txnid = _META.unpack_from(
            raw, _PAGE_HEADER.size
        )
        if pgno != number or not flags & _P_META or magic != _LMDB_MAGIC:
            return f"meta page {number} is not an LMDB meta page"
        if version != _LMDB_VERSION:
            return f"meta page {number} is LMDB format {version}, not {_LMDB_VERSION}"
        metas.append((txnid, last_page))
    _txnid, last_page = max(metas)
    needed = (last_page + 1) * page_size
    if size < needed:
        return f"it is {size} bytes but its pages run to {needed} bytes (truncated)"
    return ""


class _DataDirLock:
    """An exclusive ``flock`` on the data dir, naming its holder for the error message."""

    def __init__(self, sid: str, data_dir: pathlib.Path) -> None:
        path = data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
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

    The store in ``data_dir`` must exist, be whole and belong to storesite
    ``sid``; otherwise opening fails with a one-line :class:`StorageError`
    saying why. With ``init`` a missing store is created (and the data dir,
    whose parent must exist), and a damaged one is set aside, renamed, never
    deleted, for a new one; a store of another storesite is refused even
    then. Opening a data dir another storesite process holds fails naming the
    holder.
    """

    def __init__(
        self,
        sid: str,
        data_dir: pathlib.Path,
        *,
        init: bool = False,
        max_checkpoint_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES,
        map_size: int = DEFAULT_MAP_SIZE,
    ) -> None:
        self.sid = sid
        self.data_dir = data_dir
        self.max_checkpoint_bytes = max_checkpoint_bytes
        new_store = "start with --init to create a new one"
        if data_dir.exists() and not data_dir.is_dir():
            raise StorageError(f"storesite {sid}: data dir {data_dir} is not a directory")
        if not data_dir.exists():
            if not init:
                raise StorageError(
                    f"storesite {sid}: data dir {data_dir} does not exist; {new_store}"
                )
            if not data_dir.parent.is_dir():
                raise StorageError(
                    f"cannot create data dir {data_dir}: parent {data_dir.parent} does not exist"
                )
        try:
            # Every atom's state is in here: the storesite's user alone may read it.
            private_dir(data_dir, parents=False)
        except OSError as exc:
            raise StorageError(f"cannot create data dir {data_dir}: {exc.strerror}") from exc
        if not os.access(data_dir, os.W_OK | os.X_OK):
            raise StorageError(f"data dir {data_dir} is not writable")
        self._lock = _DataDirLock(sid, data_dir)
        try:
            self._env = self._open_env(data_dir, init, map_size, new_store)
        except BaseException:
            self._lock.release()
            raise
        self._closed = False

    def _open_env(
        self, data_dir: pathlib.Path, init: bool, map_size: int, new_store: str
    ) -> lmdb.Environment:
        sid = self.sid
        lmdb_dir = data_dir / LMDB_DIR
        data_file = lmdb_dir / DATA_FILE
        created = False
        if not data_file.exists():
            if not init:
                raise StorageError(
                    f"storesite {sid}: no store in {data_dir} ({data_file} is missing); {new_store}"
                )
            created = True
        else:
            damage = check_lmdb_file(data_file)
            if damage:
                if not init:
                    raise StorageError(
                        f"storesite {sid}: store {data_file} is damaged: {damage}; "
                        f"move it away and {new_store}"
                    )
                aside = data_dir / f"{LMDB_DIR}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
                lmdb_dir.rename(aside)
                log.warning("storesite %s: set damaged store aside as %s (%s)", sid, aside, damage)
                created = True
        try:
            # sync/metasync stay on: a reply is sent only after the commit is on disk.
            env = lmdb.open(
                str(lmdb_dir),
                map_size=map_size,
                max_dbs=8,
                subdir=True,
                sync=True,
                metasync=True,
                max_readers=256,
                # The directory 0700; LMDB makes its files with this mode less x: 0600.
                mode=DIR_MODE,
            )
        except lmdb.Error as exc:
            raise StorageError(f"storesite {sid}: cannot open store {data_file}: {exc}") from exc
        try:
            self._modules = env.open_db(b"modules")
            self._atoms = env.open_db(b"atoms")
            self._checkpoints = env.open_db(b"checkpoints")
            self._about = env.open_db(b"store")
            self._claim(env, created)
        except BaseException as exc:
            env.close()
            if isinstance(exc, lmdb.Error):
                raise StorageError(
                    f"storesite {sid}: cannot read store {data_file}: {exc}"
                ) from exc
            raise
        if created:
            log.info("storesite %s: created a new store in %s", sid, lmdb_dir)
        return env

    def _claim(self, env: lmdb.Environment, created: bool) -> None:
        """Check the store belongs to this storesite; record it when new; upgrade an old one."""
        with env.begin(write=True) as txn:
            owner = txn.get(b"sid", db=self._about)
            if owner is not None:
                if bytes(owner).decode(errors="replace") != self.sid:
                    raise StorageError(
                        f"storesite {self.sid}: the store in {self.data_dir} belongs to "
                        f"storesite {bytes(owner).decode(errors='replace')}"
                    )
                return
            if not created:
                # A store written before stores named their storesite: every
                # GUID in it names its home, which must be this storesite.
                upgraded = self._upgrade(txn)
                log.warning(
                    "storesite %s: upgraded the store in %s to format %d (%d checkpoints)",
                    self.sid,
                    self.data_dir,
                    STORE_FORMAT,
                    upgraded,
                )
            txn.put(b"sid", self.sid.encode(), db=self._about)
            txn.put(b"format", str(STORE_FORMAT).encode(), db=self._about)

    def _upgrade(self, txn: lmdb.Transaction) -> int:
        """Give an older store's checkpoints their checksums; returns how many."""
        for key, value in txn.cursor(db=self._atoms):
            guid = bytes(key).decode(errors="replace")
            home = guid.partition(":")[0]
            # Atoms registered here are homed here; only adopted ones may not be.
            if home != self.sid and not self._state(guid, bytes(value)).adopted:
                raise StorageError(
                    f"storesite {self.sid}: the store in {self.data_dir} belongs to "
                    f"storesite {home}"
                )
        count = 0
        cursor = txn.cursor(db=self._checkpoints)
        for key, value in list(cursor):
            record = msgpack.unpackb(bytes(value), raw=False)
            if len(record) == 4:
                node, age, seq, snapshot = record
                packed = _pack_checkpoint(
                    TAD(node, age), seq, snapshot, snapshot_checksum(snapshot), GENERATION_UNKNOWN
                )
                txn.put(bytes(key), packed, db=self._checkpoints)
                count += 1
        return count

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

    def register_atom(
        self,
        guid: str,
        meta: pb.AtomMeta,
        tad: TAD,
        snapshot: bytes,
        *,
        checksum: int | None = None,
        generation: int | None = None,
        incarnation: str = "",
    ) -> AtomState:
        """Record a new atom homed here at ``tad`` with its first checkpoint.

        ``incarnation`` is that of ``tad.node`` holding it.
        """
        home = GUID.parse(guid).home
        if home != self.sid:
            raise StorageError(f"atom {guid} is homed at storesite {home}, not at {self.sid}")
        self._check_size(guid, snapshot)
        checksum = _arrived(snapshot, checksum, f"first checkpoint of atom {guid} from {tad}")
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
            incarnation=incarnation,
        )
        with self._write(guid) as txn:
            if txn.get(guid.encode(), db=self._atoms) is not None:
                raise StorageError(f"atom {guid} is already registered at storesite {self.sid}")
            state = self._store_checkpoint(
                txn, state, tad, 0, snapshot, checksum, _generation(generation)
            )
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
        checksum: int | None = None,
        generation: int | None = None,
        incarnation: str = "",
    ) -> AtomState:
        """Take over an atom whose home moves here from another storesite."""
        self._check_size(guid, snapshot)
        checksum = _arrived(snapshot, checksum, f"checkpoint of atom {guid} handed over at {tad}")
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
                incarnation="" if dormant else incarnation,
            )
            state = self._store_checkpoint(
                txn, state, tad, seq, snapshot, checksum, _generation(generation)
            )
        log.info("adopted atom %s at %s (dormant=%s)", guid, tad, dormant)
        return state

    def get(self, guid: str) -> AtomState:
        """The record of ``guid`` (also for atoms whose home moved away)."""
        _check_guid(guid)
        with self._env.begin(db=self._atoms) as txn:
            raw = txn.get(guid.encode())
        if raw is None:
            raise NameNotFoundError(f"storesite {self.sid} has no atom {guid}")
        return self._state(guid, bytes(raw))

    def atoms(self) -> Iterator[AtomState]:
        """Every readable record, forwarded ones included, in GUID order.

        A damaged record is logged, naming its GUID, and left out.
        """
        records: list[AtomState] = []
        with self._env.begin(db=self._atoms) as txn:
            for key, value in txn.cursor():
                guid = bytes(key).decode(errors="replace")
                try:
                    records.append(self._state(guid, bytes(value)))
                except StorageError as exc:
                    log.error("%s", exc)
        yield from records

    def _state(self, guid: str, raw: bytes) -> AtomState:
        try:
            return AtomState.from_bytes(raw)
        except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
            raise StorageError(
                f"storesite {self.sid}: the record of atom {guid} is damaged: {exc}"
            ) from exc

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

    def put_checkpoint(
        self,
        guid: str,
        tad: TAD,
        seq: int,
        snapshot: bytes,
        *,
        checksum: int | None = None,
        generation: int | None = None,
        periodic: bool = False,
    ) -> bool:
        """Store a checkpoint sent by the node running the atom.

        Returns False (and stores nothing) when an equal or newer checkpoint
        of that age is already stored: checkpoints may arrive out of order,
        and the newer one already holds everything the older one does.
        A checkpoint from an older location is refused: that node no longer
        holds the atom and must not overwrite the newer location's state.
        One that arrived damaged (its checksum does not match) is refused.
        A ``periodic`` checkpoint promised nobody that its calls are durable:
        it leaves the atom's acknowledged generation as it was.
        """
        self._check_size(guid, snapshot)
        checksum = _arrived(snapshot, checksum, f"checkpoint of atom {guid} from {tad} seq {seq}")
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
            self._store_checkpoint(
                txn,
                state,
                tad,
                seq,
                snapshot,
                checksum,
                _generation(generation),
                acknowledged=not periodic,
            )
        return True

    def latest_checkpoint(self, guid: str) -> Checkpoint:
        """The checkpoint to restore ``guid`` from: the latest, checked.

        If the latest is damaged, the newest good one kept, when it holds
        every call acknowledged as durable; otherwise a StorageError naming
        the atom and the damage (see the module docstring).
        """
        with self._env.begin() as txn:
            raw = txn.get(guid.encode(), db=self._atoms)
            if raw is None:
                raise NameNotFoundError(f"storesite {self.sid} has no atom {guid}")
            return self._restorable(txn, self._state(guid, bytes(raw)))

    def checkpoint_history(self, guid: str) -> list[Checkpoint]:
        """Kept checkpoints of ``guid``, oldest first, checked (a damaged one raises)."""
        state = self.get(guid)
        prefix = guid.encode() + b"/"
        found: list[Checkpoint] = []
        with self._env.begin(db=self._checkpoints) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    number = int.from_bytes(key[len(prefix) :], "big")
                    if number > state.checkpoint_no:
                        break  # a staged snapshot of a pending move, not a checkpoint yet
                    found.append(self._unpack_checkpoint(state, bytes(value), number))
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

    def stage(
        self,
        guid: str,
        tad: TAD,
        snapshot: bytes,
        *,
        checksum: int | None = None,
        generation: int | None = None,
    ) -> None:
        """Keep the snapshot of the pending move to ``tad`` for its COMMIT.

        It goes straight into the next checkpoint slot, so COMMIT only has to
        make it current (no 16 MiB copy while calls are held). Nothing else
        writes checkpoints of an atom while its move is pending.
        """
        self._check_size(guid, snapshot)
        checksum = _arrived(snapshot, checksum, f"staged snapshot of atom {guid} for {tad}")
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            self._check_pending(state, tad, "staging")
            txn.put(
                _checkpoint_key(guid, state.checkpoint_no + 1),
                _pack_checkpoint(tad, 0, snapshot, checksum, _generation(generation)),
                db=self._checkpoints,
            )

    def commit(
        self,
        guid: str,
        tad: TAD,
        snapshot: bytes,
        *,
        checksum: int | None = None,
        generation: int | None = None,
        incarnation: str = "",
    ) -> AtomState:
        """Complete the pending move: ``tad`` becomes the location, the snapshot the checkpoint.

        An empty ``snapshot`` means the one staged for this move, checked
        first: a damaged one fails the commit, so the move aborts.
        ``incarnation`` is the destination's that staged the copy.
        """
        self._check_size(guid, snapshot)
        if snapshot:
            checksum = _arrived(snapshot, checksum, f"snapshot of atom {guid} committed at {tad}")
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            self._check_pending(state, tad, "commit")
            state = replace(state, location=tad, pending=None, incarnation=incarnation)
            if snapshot:
                assert checksum is not None
                state = self._store_checkpoint(
                    txn, state, tad, 0, snapshot, checksum, _generation(generation)
                )
            else:
                number = state.checkpoint_no + 1
                staged = txn.get(_checkpoint_key(guid, number), db=self._checkpoints)
                if staged is None:
                    raise MigrationError(f"commit of atom {guid} to {tad}: no snapshot was staged")
                checked = self._unpack_checkpoint(state, bytes(staged), number)
                if checked.tad != tad:
                    raise MigrationError(f"commit of atom {guid} to {tad}: no snapshot was staged")
                state = self._advance_checkpoint(txn, state, tad, 0, checked.generation)
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

    def passivated(
        self,
        guid: str,
        tad: TAD,
        snapshot: bytes,
        *,
        checksum: int | None = None,
        generation: int | None = None,
    ) -> AtomState:
        """The node at ``tad`` dropped the atom after a final checkpoint: it is dormant."""
        self._check_size(guid, snapshot)
        checksum = _arrived(snapshot, checksum, f"final checkpoint of atom {guid} from {tad}")
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            self._check_current(state, tad, "passivation")
            if state.pending is not None:
                raise MigrationError(
                    f"atom {guid} is moving to {state.pending.node}; it cannot be passivated"
                )
            seq = state.checkpoint_seq + 1 if state.checkpoint_age == tad.age else 1
            state = replace(state, dormant=True)
            state = self._store_checkpoint(
                txn, state, tad, seq, snapshot, checksum, _generation(generation)
            )
        log.info("atom %s is dormant (last at %s)", guid, tad)
        return state

    # ------------------------------------------------ activation and recovery

    def reserve_age(self, guid: str) -> tuple[int, Checkpoint]:
        """Hand out the next age for an activation or recovery attempt.

        Durable before the node is asked, so a failed attempt's age is never
        reused. The checkpoint is checked as in :meth:`latest_checkpoint`;
        when none can be restored nothing changes and a StorageError says why.
        """
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            checkpoint = self._restorable(txn, state)
            age = state.next_age
            state = replace(state, next_age=age + 1)
            self._put_state(txn, state)
        return age, checkpoint

    def activated(self, guid: str, tad: TAD, incarnation: str = "") -> AtomState:
        """The atom now runs at ``tad`` on node ``incarnation`` (after activation or recovery).

        Any pending move is gone.
        """
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            if tad.age < state.location.age:
                raise MigrationError(
                    f"activation of atom {guid} at {tad} is older than its location "
                    f"{state.location}"
                )
            state = replace(
                state, location=tad, dormant=False, pending=None, incarnation=incarnation
            )
            self._put_state(txn, state)
        return state

    def set_incarnation(self, guid: str, tad: TAD, incarnation: str) -> AtomState:
        """Record which incarnation of ``tad.node`` holds the atom (a reconciled old record)."""
        with self._write(guid) as txn:
            state = self._live_state(txn, guid)
            self._check_current(state, tad, "reconciliation")
            state = replace(state, incarnation=incarnation)
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
        state = self._state(guid, bytes(raw))
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
        packed = _pack_checkpoint(tad, seq, snapshot, checksum, generation)
        txn.put(_checkpoint_key(state.guid, state.checkpoint_no + 1), packed, db=self._checkpoints)
        return self._advance_checkpoint(txn, state, tad, seq, generation, acknowledged=acknowledged)

    def _advance_checkpoint(
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
            txn.delete(_checkpoint_key(state.guid, expired), db=self._checkpoints)
        state = replace(
            state,
            checkpoint_no=number,
            checkpoint_age=tad.age,
            checkpoint_seq=seq,
            checkpoint_generation=generation,
            durable_generation=generation if acknowledged else state.durable_generation,
        )
        self._put_state(txn, state)
        return state

    def _restorable(self, txn: lmdb.Transaction, state: AtomState) -> Checkpoint:
        """The latest good checkpoint of ``state`` that keeps every acknowledged call."""
        guid = state.guid
        damage: list[str] = []
        oldest = max(1, state.checkpoint_no - KEEP_PREVIOUS_CHECKPOINTS)
        for number in range(state.checkpoint_no, oldest - 1, -1):
            data = txn.get(_checkpoint_key(guid, number), db=self._checkpoints)
            try:
                if data is None:
                    raise CheckpointDamagedError(f"checkpoint #{number} of atom {guid} is missing")
                checkpoint = self._unpack_checkpoint(state, bytes(data), number)
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

    def _delete_checkpoints(self, txn: lmdb.Transaction, guid: str) -> None:
        prefix = guid.encode() + b"/"
        cursor = txn.cursor(db=self._checkpoints)
        if cursor.set_range(prefix):
            while bytes(cursor.key()).startswith(prefix):
                if not cursor.delete():
                    break

    @staticmethod
    def _unpack_checkpoint(state: AtomState, data: bytes, number: int) -> Checkpoint:
        """A stored checkpoint, checked against its checksum; StorageError if damaged."""
        what = f"checkpoint #{number} of atom {state.guid}"
        try:
            node, age, seq, snapshot, checksum, generation = msgpack.unpackb(data, raw=False)
            tad = TAD(str(node), int(age))
            seq, checksum, generation = int(seq), int(checksum), int(generation)
            snapshot = bytes(snapshot)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CheckpointDamagedError(
                f"{what} is damaged: its record cannot be read ({exc})"
            ) from exc
        verify_checksum(snapshot, checksum, f"{what} ({tad} seq {seq})")
        return Checkpoint(
            guid=state.guid,
            tad=tad,
            seq=seq,
            snapshot=snapshot,
            meta=state.meta,
            checksum=checksum,
            generation=generation,
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
