"""The compiled modules of a node's atoms, fetched from an atom's storesite when missing.

A module is compiled once per node and shared by every atom built from it;
its hash (sha256 of the bytes) names it, and a module fetched for an atom is
checked against the hash in the atom's metadata before any atom runs it.
"""

from __future__ import annotations

import threading

from hermesx.core.errors import StorageError
from hermesx.node.storage import AtomStoresites
from hermesx.runtime.atom import LoadedModule, Runtime

__all__ = ["ModuleCache"]


class ModuleCache:
    """Loaded modules by hash."""

    def __init__(self, runtime: Runtime, storesites: AtomStoresites) -> None:
        self._runtime = runtime
        self._storesites = storesites
        self._modules: dict[str, LoadedModule] = {}
        self._lock = threading.Lock()

    def get(self, module_hash: str, guid: str) -> LoadedModule:
        """The compiled module with this hash, fetched from ``guid``'s storesite if we lack it."""
        loaded = self._modules.get(module_hash)
        if loaded is not None:
            return loaded
        with self._lock:
            loaded = self._modules.get(module_hash)
            if loaded is not None:
                return loaded
            wasm = self._storesites.get_module(guid, module_hash)
            loaded = self._runtime.load(wasm)
            if loaded.hash != module_hash:
                raise StorageError(
                    f"module of atom {guid}: expected hash {module_hash}, got {loaded.hash}"
                )
            self._modules[module_hash] = loaded
            return loaded

    def keep(self, loaded: LoadedModule) -> None:
        """Keep a module this node compiled itself (a new atom's)."""
        self._modules.setdefault(loaded.hash, loaded)
