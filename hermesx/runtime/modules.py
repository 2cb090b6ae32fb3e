"""Atom modules: validate, rewrite, compile (with an on-disk cache) and instantiate.

See docs/DESIGN.md §3.

A :class:`LoadedModule` is what :meth:`Runtime.load` hands out: the module
checked against ABI v1 (its imports, exports and ``hx_abi_version``), its
mutable globals exported for snapshots, compiled for the runtime's engine.
Compiled code is cached under the node's cache directory by content hash and
wasmtime version. :func:`instantiate` turns wasmtime's instantiation failures
into the errors a user can act on (a bad start function, the memory cap, the
node's address space).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import pathlib
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import wasmtime

from hermesx.core.errors import BadModuleError, CapacityError, MemoryLimitError
from hermesx.core.files import private_dir
from hermesx.runtime import abi
from hermesx.runtime.imports import Syscalls, make_imports
from hermesx.runtime.instance import WasmFault, WasmInstance
from hermesx.runtime.rewrite import check_module_limits, export_mutable_globals

if TYPE_CHECKING:
    from hermesx.runtime.engine import Runtime

__all__ = [
    "MAX_TABLE_ELEMENTS",
    "PAGE",
    "LoadedModule",
    "check_abi_version",
    "compile_module",
    "instantiate",
]

logger = logging.getLogger(__name__)

PAGE = 65536
# Tables are not counted in the memory cap: without a bound of their own, one
# `(table 100000000 funcref)` costs the node ~1 GiB per instance. C atoms use
# a table only for function pointers, a few hundred entries at most.
MAX_TABLE_ELEMENTS = 1 << 16
# Serialized modules only load into an engine with the same version and config.
_CACHE_TAG = f"wasmtime{importlib.metadata.version('wasmtime')}-hx2"


@dataclass(frozen=True, slots=True, eq=False)
class LoadedModule:
    """A validated, rewritten and compiled atom module."""

    hash: str  # hex sha256 of the ORIGINAL module bytes
    wasm: bytes  # the original bytes
    compiled: wasmtime.Module
    imports: tuple[str, ...]  # hx import names, in the module's import order
    optional_exports: frozenset[str]
    # (export name, value type) of every mutable global, in index order.
    mutable_globals: tuple[tuple[str, str], ...]

    @property
    def is_daemon(self) -> bool:
        return "hx_main" in self.optional_exports

    @property
    def has_init(self) -> bool:
        return "hx_init" in self.optional_exports


class _NoSyscalls:
    """Syscalls while validating a module: a start function gets none."""

    guid = "validation"
    node_name = "validation"
    kv: dict[bytes, bytes] = {}

    def __getattr__(self, name: str) -> Any:
        def refuse(*_args: Any) -> Any:
            raise BadModuleError(f"the start function calls a syscall ({name}) while loading")

        return refuse


def compile_module(
    engine: wasmtime.Engine, cache_dir: pathlib.Path | None, wasm: bytes, digest: str
) -> LoadedModule:
    """Validate, rewrite and compile ``wasm`` (whose sha256 is ``digest``)."""
    label = f"module {digest[:12]} ({len(wasm)} bytes)"
    try:
        # Counts first: compiling and instantiating cost grows with them.
        check_module_limits(wasm)
        rewritten = export_mutable_globals(wasm)
        compiled = _compile(engine, cache_dir, digest, rewritten.wasm)
        imports, optional = abi.validate_module_types(compiled)
    except BadModuleError as exc:
        # The checks above describe the defect; the user needs to know which module.
        if str(exc).startswith(f"module {digest[:12]}"):
            raise
        raise BadModuleError(f"{label}: {exc}") from exc
    export_types = {exp.name: exp.type for exp in compiled.exports}
    globals_: list[tuple[str, str]] = []
    for name in rewritten.mutable_globals:
        gtype = export_types.get(name)
        kind = str(gtype.content) if isinstance(gtype, wasmtime.GlobalType) else "?"
        if kind not in ("i32", "i64", "f32", "f64"):
            raise BadModuleError(
                f"module {digest[:12]} has a mutable global {name!r} of type {kind}, "
                "which snapshots cannot hold"
            )
        globals_.append((name, kind))
    return LoadedModule(digest, bytes(wasm), compiled, imports, optional, tuple(globals_))


def _compile(
    engine: wasmtime.Engine, cache_dir: pathlib.Path | None, digest: str, wasm: bytes
) -> wasmtime.Module:
    path = cache_dir / f"{digest}.{_CACHE_TAG}.cwasm" if cache_dir else None
    if path is not None and path.exists():
        try:
            return wasmtime.Module.deserialize_file(engine, str(path))
        except wasmtime.WasmtimeError as exc:
            logger.warning("module cache %s unusable, compiling again: %s", path, exc)
    try:
        compiled = wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise BadModuleError(f"module {digest[:12]} is not valid WebAssembly: {first}") from exc
    if path is not None:
        _store_compiled(path, compiled)
    return compiled


def _store_compiled(path: pathlib.Path, compiled: wasmtime.Module) -> None:
    try:
        private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(compiled.serialize())
        os.replace(tmp, path)
    except OSError as exc:
        # The cache only saves compile time; running without it is fine.
        logger.warning("cannot write module cache %s: %s", path, exc)


def check_abi_version(runtime: Runtime, module: LoadedModule) -> None:
    """Instantiate ``module`` once, without syscalls, and ask its ``hx_abi_version``."""
    store = wasmtime.Store(runtime.engine)
    store.set_limits(memory_size=runtime.memory_limit_bytes, table_elements=MAX_TABLE_ELEMENTS)
    inst = WasmInstance(store, runtime.max_payload_bytes)
    funcs, _keep = make_imports(inst, module.imports, cast(Syscalls, _NoSyscalls()))
    store.set_epoch_deadline(runtime.ticks_for(runtime.deadline_ms / 1000))
    label = f"module {module.hash[:12]}"
    instance = instantiate(store, module, funcs, label, runtime)
    inst.bind(instance)
    try:
        version = inst.call("hx_abi_version", (), True)
    except WasmFault as fault:
        raise BadModuleError(f"{label}: hx_abi_version trapped: {fault.message}") from fault
    if version != abi.ABI_VERSION:
        raise BadModuleError(
            f"{label} implements ABI version {version}; this runtime speaks {abi.ABI_VERSION}"
        )


def instantiate(
    store: wasmtime.Store,
    module: LoadedModule,
    funcs: list[wasmtime.Func],
    label: str,
    runtime: Runtime,
) -> wasmtime.Instance:
    try:
        return wasmtime.Instance(store, module.compiled, funcs)
    except wasmtime.Trap as exc:
        if exc.trap_code == wasmtime.TrapCode.INTERRUPT:
            raise BadModuleError(
                f"{label}: the start function ran past the {runtime.deadline_ms} ms deadline"
            ) from exc
        # wasmtime puts a backtrace first and the reason ("wasm trap: ...") last.
        lines = [line.strip() for line in exc.message.splitlines() if line.strip()]
        reason = lines[-1] if lines else "trap"
        raise BadModuleError(f"{label}: the start function trapped: {reason}") from exc
    except wasmtime.WasmtimeError as exc:
        text = str(exc)
        if "Cannot allocate memory" in text or "os error 12" in text:
            raise CapacityError(
                f"{label}: node {runtime.node_name} cannot reserve memory for another atom "
                f"(it holds {runtime.atom_count}; raise vm.max_map_count or host fewer atoms "
                f"per node): {text.splitlines()[0]}"
            ) from exc
        if "memory" in text and ("limit" in text or "minimum" in text or "grow" in text):
            raise MemoryLimitError(
                f"{label} needs more memory than the cap of {runtime.memory_limit_bytes} bytes"
            ) from exc
        raise BadModuleError(f"{label} cannot be instantiated: {text.splitlines()[0]}") from exc
