"""The LMDB environment of one storesite and its data directory (docs/DESIGN.md §6).

:class:`StoreEnvironment` opens a storesite's store: the data directory must
exist (or ``init`` creates it), is locked with ``flock`` so two storesite
processes never share it, and its data file is checked whole
(:func:`check_lmdb_file`) before LMDB maps it. The store must belong to this
storesite id; a store of an older format is upgraded in place. Four
sub-databases: ``modules``, ``atoms``, ``checkpoints`` and ``store`` (who the
store belongs to and its format). :class:`WriteTxn` is the durable write
transaction every change but a checkpoint runs in (checkpoints are group
committed: :mod:`storesite.committer`), turning LMDB failures into StorageError.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import pathlib
import struct
import time

import lmdb
import msgpack

from hermesx.core.errors import StorageError
from hermesx.core.files import DIR_MODE, FILE_MODE, private_dir
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import snapshot_checksum
from storesite.chain import pack_whole
from storesite.records import GENERATION_UNKNOWN, parse_state

__all__ = ["DEFAULT_MAP_SIZE", "StoreEnvironment", "WriteTxn", "check_lmdb_file"]

log = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 1 << 35  # 32 GiB of address space; the file grows only as used
LOCK_FILE = "storesite.lock"
LMDB_DIR = "lmdb"
DATA_FILE = "data.mdb"
# Format 2: checkpoints carry a checksum and a generation; the store names its storesite.
# Format 3: a checkpoint slot may hold a delta record (storesite.chain). A format-2
# store is one already (its records are all whole): opening it only says so.
# Format 4: a delta record may hold a delta of format 2 (chunks deflated,
# hermesx.core.delta). A format-3 store is one already: opening it only says so; a
# storesite of format 3 refuses a format-4 store rather than find its deltas damaged.
STORE_FORMAT = 4


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


class StoreEnvironment:
    """The open LMDB environment of storesite ``sid`` in ``data_dir``, locked for this process.

    The store must exist, be whole and belong to storesite ``sid``;
    otherwise opening fails with a one-line :class:`StorageError` saying
    why. With ``init`` a missing store is created (and the data dir, whose
    parent must exist), and a damaged one is set aside, renamed, never
    deleted, for a new one; a store of another storesite is refused even
    then. Opening a data dir another storesite process holds fails naming
    the holder.
    """

    def __init__(
        self, sid: str, data_dir: pathlib.Path, *, init: bool, map_size: int = DEFAULT_MAP_SIZE
    ) -> None:
        self.sid = sid
        self.data_dir = data_dir
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
            self.env = self._open_env(data_dir, init, map_size, new_store)
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
            self.modules = env.open_db(b"modules")
            self.atoms = env.open_db(b"atoms")
            self.checkpoints = env.open_db(b"checkpoints")
            self.about = env.open_db(b"store")
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
            owner = txn.get(b"sid", db=self.about)
            if owner is not None:
                if bytes(owner).decode(errors="replace") != self.sid:
                    raise StorageError(
                        f"storesite {self.sid}: the store in {self.data_dir} belongs to "
                        f"storesite {bytes(owner).decode(errors='replace')}"
                    )
                self._check_format(txn)
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
            txn.put(b"sid", self.sid.encode(), db=self.about)
            txn.put(b"format", str(STORE_FORMAT).encode(), db=self.about)

    def _check_format(self, txn: lmdb.Transaction) -> None:
        """Refuse a store of a newer format; mark an older named one as this format."""
        raw = txn.get(b"format", db=self.about)
        text = bytes(raw).decode(errors="replace") if raw is not None else "2"
        if not text.isdigit() or int(text) > STORE_FORMAT:
            raise StorageError(
                f"storesite {self.sid}: the store in {self.data_dir} is of format {text}, "
                f"newer than this storesite's {STORE_FORMAT}"
            )
        if int(text) < STORE_FORMAT:
            txn.put(b"format", str(STORE_FORMAT).encode(), db=self.about)
            log.info("storesite %s: store format %s is now %d", self.sid, text, STORE_FORMAT)

    def _upgrade(self, txn: lmdb.Transaction) -> int:
        """Give an older store's checkpoints their checksums; returns how many."""
        for key, value in txn.cursor(db=self.atoms):
            guid = bytes(key).decode(errors="replace")
            home = guid.partition(":")[0]
            # Atoms registered here are homed here; only adopted ones may not be.
            if home != self.sid and not parse_state(self.sid, guid, bytes(value)).adopted:
                raise StorageError(
                    f"storesite {self.sid}: the store in {self.data_dir} belongs to "
                    f"storesite {home}"
                )
        count = 0
        cursor = txn.cursor(db=self.checkpoints)
        for key, value in list(cursor):
            record = msgpack.unpackb(bytes(value), raw=False)
            if len(record) == 4:
                node, age, seq, snapshot = record
                packed = pack_whole(
                    TAD(node, age), seq, snapshot, snapshot_checksum(snapshot), GENERATION_UNKNOWN
                )
                txn.put(bytes(key), packed, db=self.checkpoints)
                count += 1
        return count

    # ------------------------------------------------------------------ life

    def write(self, guid: str) -> WriteTxn:
        """A durable write transaction on the records of ``guid``."""
        return WriteTxn(self, guid)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.env.close()
            self._lock.release()


class WriteTxn:
    """A durable write transaction that turns LMDB failures into StorageError."""

    def __init__(self, store: StoreEnvironment, guid: str) -> None:
        # Refuse text that is not a GUID before it becomes an LMDB key.
        GUID.parse(guid)
        self._store = store
        self._guid = guid
        self._txn: lmdb.Transaction | None = None

    def __enter__(self) -> lmdb.Transaction:
        try:
            self._txn = self._store.env.begin(write=True)
        except lmdb.Error as exc:
            raise self._failed(exc) from exc
        return self._txn

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        assert self._txn is not None
        if exc_type is not None:
            self._txn.abort()
            if isinstance(exc, lmdb.Error):
                raise self._failed(exc) from exc
            return
        try:
            self._txn.commit()
        except lmdb.Error as error:
            raise self._failed(error) from error

    def _failed(self, exc: lmdb.Error) -> StorageError:
        return StorageError(
            f"storesite {self._store.sid}: cannot write records of atom {self._guid}: {exc}"
        )
