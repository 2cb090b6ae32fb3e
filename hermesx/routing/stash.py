"""A node's stash: the newest TAD it knows for each GUID (docs/DESIGN.md §1, §4).

Reads come from memory (the invocation path is the hot path); every change
is written through to a node-local LMDB so that forwarding pointers survive a
restart of the node. A TAD only ever replaces an older one: ages never go
back, so late or reordered replies cannot make the stash stale.

The disk copy is a cache of a cache: written without sync, so a crash may
lose the last pointers, which costs a storesite lookup. A write the disk
refuses (full, or the map full) is the same loss and is treated alike: the
pointer is kept in memory and a warning logged. Failing instead would fail a
call that ran or a move already committed (docs/DESIGN.md §5): its source
answered the client `storage` and left the atom's frozen copy unretired, so
the calls waiting on it hung until their deadline.
"""

from __future__ import annotations

import logging
import pathlib
import struct
import threading

import lmdb

from hermesx.core.errors import StorageError
from hermesx.core.files import DIR_MODE, private_dir
from hermesx.core.identity import TAD
from hermesx.observe.logflood import Throttle

__all__ = ["Stash"]

log = logging.getLogger(__name__)
# A full disk refuses every write of a busy node: bounded like a peer's warnings.
log.addFilter(Throttle())

_AGE = struct.Struct(">Q")


class Stash:
    def __init__(self, path: pathlib.Path | None = None) -> None:
        self._lock = threading.Lock()
        self._tads: dict[str, TAD] = {}
        self._env: lmdb.Environment | None = None
        if path is not None:
            try:
                private_dir(path)
                # sync=False: a crash may lose the last few pointers, which
                # only costs a storesite lookup; it must not cost 0.4 ms a call.
                self._env = lmdb.open(
                    str(path), map_size=1 << 30, sync=False, max_dbs=1, mode=DIR_MODE
                )
            except lmdb.Error as exc:
                raise StorageError(f"cannot open the stash at {path}: {exc}") from exc
            self._load()

    def _load(self) -> None:
        assert self._env is not None
        with self._env.begin() as txn:
            for key, value in txn.cursor():
                age = _AGE.unpack_from(value)[0]
                self._tads[key.decode()] = TAD(value[_AGE.size :].decode(), age)
        log.debug("stash loaded %d entries", len(self._tads))

    def get(self, guid: str) -> TAD | None:
        return self._tads.get(guid)

    def update(self, guid: str, tad: TAD) -> bool:
        """Record ``tad`` if it is newer than what we hold. True if it changed."""
        with self._lock:
            current = self._tads.get(guid)
            if current is not None and current.age >= tad.age:
                return False
            # Disk first: a refused write must not leave a pointer a restart forgets.
            self._write(guid, tad)
            self._tads[guid] = tad
            return True

    def force(self, guid: str, tad: TAD) -> None:
        """Set ``tad`` regardless of age (test hook for building chains and loops)."""
        with self._lock:
            self._write(guid, tad)
            self._tads[guid] = tad

    def forget(self, guid: str) -> None:
        """Drop what we know of ``guid`` (it went dormant: ask its storesite next time)."""
        with self._lock:
            if self._env is not None:
                try:
                    with self._env.begin(write=True) as txn:
                        txn.delete(guid.encode())
                except lmdb.Error as exc:
                    raise StorageError(
                        f"cannot drop the stash entry of atom {guid}: {exc}"
                    ) from exc
            self._tads.pop(guid, None)

    def _write(self, guid: str, tad: TAD) -> None:
        if self._env is None:
            return
        key = guid.encode()
        if not key or len(key) > self._env.max_key_size():
            # Never kept at all: a pointer served but forgotten at the next restart.
            raise StorageError(
                f"cannot keep a stash entry for atom {guid[:80]!r}: its key is empty or "
                f"over {self._env.max_key_size()} bytes"
            )
        try:
            with self._env.begin(write=True) as txn:
                txn.put(key, _AGE.pack(tad.age) + tad.node.encode())
        except lmdb.Error as exc:
            # Lost like an unsynced write at a crash (see the module's docstring).
            log.warning("stash entry of atom %s kept in memory only: %s", guid, exc)

    def __len__(self) -> int:
        return len(self._tads)

    def close(self) -> None:
        if self._env is not None:
            self._env.sync(True)
            self._env.close()
            self._env = None
