"""Building a node's atoms: compiled modules, new atoms and restored ones (docs/DESIGN.md §4, §6).

A module is compiled once per node and shared by every atom built from it;
its hash (sha256 of the bytes) names it. A module this node lacks is fetched
from the storesite of the atom that needs it and checked against the hash in
the atom's metadata before any atom runs it. Every atom built here gets the
node's :class:`~hermesx.node.host.NodeHost` for its syscalls.
"""

from __future__ import annotations

import threading

from hermesx.core.errors import StorageError
from hermesx.node.storage import AtomStoresites
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.runtime.atom import Atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import AtomHost
from hermesx.runtime.modules import LoadedModule

__all__ = ["AtomBuilder"]


class AtomBuilder:
    """Loaded modules by hash, and the atoms built from them."""

    def __init__(self, runtime: Runtime, host: AtomHost, storesites: AtomStoresites) -> None:
        self._runtime = runtime
        self._host = host
        self._storesites = storesites
        self._modules: dict[str, LoadedModule] = {}
        self._lock = threading.Lock()

    def module(self, module_hash: str, guid: str) -> LoadedModule:
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

    def compile(self, wasm: bytes) -> LoadedModule:
        """A new atom's module, compiled (kept once the atom exists: :meth:`keep`)."""
        return self._runtime.load(wasm)

    def keep(self, loaded: LoadedModule) -> None:
        self._modules.setdefault(loaded.hash, loaded)

    def create(self, loaded: LoadedModule, guid: str, init_args: bytes, meta: pb.AtomMeta) -> Atom:
        """A new atom ``guid`` of ``loaded``, its ``init`` run with ``init_args``."""
        return self._runtime.create(loaded, guid, self._host, init_args, reentrant=meta.reentrant)

    def restore(self, guid: str, meta: pb.AtomMeta, snapshot: bytes) -> Atom:
        """Atom ``guid`` restored from ``snapshot`` (its module fetched if need be)."""
        module = self.module(meta.module_hash, guid)
        return self._runtime.restore(module, guid, self._host, snapshot, reentrant=meta.reentrant)
