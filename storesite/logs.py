"""The log lines a storesite keeps of its atoms, beside their checkpoints (docs/DESIGN.md §12).

One LMDB record per atom in the ``logs`` table, apart from the checkpoint
records (a snapshot never carries log lines, and a checkpoint never waits
for them): the lines its nodes sent after checkpoints, passivations and
moves, merged by their ``(age, n)`` so a line sent twice is kept once, and
bounded like every ring (:data:`hermesx.observe.atomlog.MAX_LINES`, ``MAX_BYTES``).
"""

from __future__ import annotations

import lmdb

from hermesx.core.errors import StorageError
from hermesx.observe.atomlog import decode_lines, encode_lines, merge_lines
from storesite.environment import StoreEnvironment

__all__ = ["LogStore"]


class LogStore:
    """The ``logs`` table of one store."""

    def __init__(self, env: StoreEnvironment) -> None:
        self._env = env.env
        try:
            self._db = self._env.open_db(b"logs")
        except lmdb.Error as exc:
            raise StorageError(f"cannot open the table of atom logs: {exc}") from exc

    def put(self, guid: str, lines: bytes) -> None:
        """Merge ``lines`` (:func:`~hermesx.observe.atomlog.encode_lines`) into ``guid``'s."""
        new = decode_lines(lines)
        if not new:
            return
        key = guid.encode()
        with self._env.begin(write=True, db=self._db) as txn:
            old = txn.get(key)
            merged = merge_lines(decode_lines(bytes(old)) if old else (), new)
            txn.put(key, encode_lines(merged))

    def delete(self, txn: lmdb.Transaction, guid: str) -> None:
        """Within ``txn`` (which forgets the atom): its lines go with it."""
        txn.delete(guid.encode(), db=self._db)

    def get(self, guid: str) -> bytes:
        with self._env.begin(db=self._db) as txn:
            data = txn.get(guid.encode())
        return bytes(data) if data else b""
