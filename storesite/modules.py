"""Atom modules by content address (docs/DESIGN.md §6).

:class:`ModuleStore` keeps the ``modules`` sub-database: hex sha256 →
module bytes, verified on put and never overwritten, so every node that
fetches a module by its hash gets exactly the bytes that hash names.
"""

from __future__ import annotations

import hashlib

import lmdb

from hermesx.core.errors import NameNotFoundError, StorageError
from storesite.environment import StoreEnvironment

__all__ = ["ModuleStore", "module_hash"]


def module_hash(module: bytes) -> str:
    """The content address of a module: hex sha256 of its bytes."""
    return hashlib.sha256(module).hexdigest()


class ModuleStore:
    """Module bytes by hash in one storesite's store."""

    def __init__(self, env: StoreEnvironment) -> None:
        self._env = env
        self.sid = env.sid

    def put(self, module: bytes, expected_hash: str | None = None) -> str:
        """Store module bytes under their hash and return it (idempotent)."""
        digest = module_hash(module)
        if expected_hash is not None and expected_hash != digest:
            raise StorageError(
                f"module bytes hash to {digest[:16]}…, not the announced {expected_hash[:16]}…"
            )
        try:
            with self._env.env.begin(write=True, db=self._env.modules) as txn:
                txn.put(digest.encode(), module, overwrite=False)
        except lmdb.Error as exc:
            raise StorageError(f"storesite {self.sid}: cannot store module: {exc}") from exc
        return digest

    def get(self, digest: str) -> bytes:
        try:
            with self._env.env.begin(db=self._env.modules) as txn:
                data = txn.get(digest.encode())
        except lmdb.Error as exc:
            raise StorageError(f"storesite {self.sid}: cannot read module: {exc}") from exc
        if data is None:
            raise NameNotFoundError(f"storesite {self.sid} has no module {digest}")
        return bytes(data)

    def has(self, digest: str) -> bool:
        with self._env.env.begin(db=self._env.modules) as txn:
            return txn.get(digest.encode()) is not None
