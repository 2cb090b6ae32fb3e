"""ABI v1 of atoms: the ``hx`` imports and the exports, and the check of a module against them.

atoms/ABI.md is the contract (docs/DESIGN.md §3); this module holds its tables: the
imports (name -> signature) an atom may ask for, the exports it must or may
have, the status codes and log levels of the syscalls, and
:func:`validate_module_types`, which the runtime runs on every module it loads.
The host functions behind the imports are in hermesx.runtime.imports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgpack
import wasmtime

from hermesx.core.errors import BadModuleError

__all__ = [
    "ABI_VERSION",
    "IMPORTS",
    "LOG_LEVELS",
    "LOOKUP_MODES",
    "MAX_LOG_LINE_BYTES",
    "OPTIONAL_EXPORTS",
    "REQUIRED_EXPORTS",
    "STATUS_ERROR",
    "STATUS_INVALID",
    "STATUS_OK",
    "func_signature",
    "pack_strings",
    "signature_text",
    "validate_module_types",
]

ABI_VERSION = 1

# Signatures as (params, results); "i" = i32, "I" = i64.
IMPORTS: dict[str, tuple[str, str]] = {
    "reply": ("ii", ""),
    "log": ("iii", ""),
    "now_ms": ("", "I"),
    "self_guid": ("ii", "i"),
    "node_name": ("ii", "i"),
    "invoke": ("iiiiiii", "i"),
    "invoke_async": ("iiiiii", "i"),
    "send": ("iiiii", "i"),
    "recv": ("i", "i"),
    "yield": ("", "i"),
    "kv_get": ("iii", "i"),
    "kv_put": ("iiii", "i"),
    "kv_del": ("ii", "i"),
    "kv_keys": ("iii", "i"),
    "lookup": ("iiiiii", "i"),
    "alias_add": ("iiii", "i"),
    "alias_remove": ("iiii", "i"),
    "move_to": ("ii", "i"),
    "checkpoint": ("", "i"),
}

REQUIRED_EXPORTS: dict[str, tuple[str, str]] = {
    "hx_abi_version": ("", "i"),
    "hx_alloc": ("i", "i"),
    "hx_invoke": ("iiii", "i"),
}

OPTIONAL_EXPORTS: dict[str, tuple[str, str]] = {
    "hx_init": ("ii", "i"),
    "hx_interrupt": ("iii", ""),
    "hx_future": ("iiii", ""),
    "hx_main": ("", ""),
}
# A buffer for a call's inputs and a slot for its reply (atoms/ABI.md "The inbox").
OPTIONAL_EXPORTS["hx_inbox"] = ("", "i")

LOOKUP_MODES = {0: "exact", 1: "any", 2: "all"}
LOG_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}

# Status codes of ABI.md.
STATUS_OK = 0
STATUS_ERROR = 1
STATUS_INVALID = -1

# A log line longer than this is cut (the rest is counted, not copied).
MAX_LOG_LINE_BYTES = 4096


def signature_text(sig: tuple[str, str]) -> str:
    """``(i32, i32) -> i32`` for error messages."""
    names = {"i": "i32", "I": "i64"}
    params = ", ".join(names[c] for c in sig[0])
    results = ", ".join(names[c] for c in sig[1])
    return f"({params}) -> ({results})"


def func_signature(ty: wasmtime.FuncType) -> tuple[str, str] | None:
    """The (params, results) code of a function type, None if it uses other types."""
    codes = {"i32": "i", "i64": "I"}
    try:
        params = "".join(codes[str(p)] for p in ty.params)
        results = "".join(codes[str(r)] for r in ty.results)
    except KeyError:
        return None
    return params, results


def validate_module_types(module: wasmtime.Module) -> tuple[tuple[str, ...], frozenset[str]]:
    """Check imports and exports of a compiled module against ABI v1.

    Returns the names of the ``hx`` imports in import order and the names of
    the optional exports the module has. Raises BadModuleError naming the
    first problem.
    """
    import_names: list[str] = []
    for imp in module.imports:
        where = f"{imp.module}.{imp.name}"
        if imp.module != "hx":
            raise BadModuleError(
                f"module imports {where}: atoms may import only from module 'hx' "
                "(no host access beyond the hx syscalls)"
            )
        name = imp.name or ""
        if name not in IMPORTS:
            raise BadModuleError(f"module imports hx.{name}, which is not an hx syscall of ABI v1")
        expected = IMPORTS[name]
        imp_type = imp.type
        if not isinstance(imp_type, wasmtime.FuncType) or func_signature(imp_type) != expected:
            raise BadModuleError(
                f"module imports hx.{name} with the wrong type "
                f"(ABI v1 has {signature_text(expected)})"
            )
        import_names.append(name)

    exports: dict[str, Any] = {exp.name: exp.type for exp in module.exports}
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        raise BadModuleError("module does not export its memory as 'memory'")
    for name, expected in REQUIRED_EXPORTS.items():
        ty = exports.get(name)
        if ty is None:
            raise BadModuleError(f"module does not export {name} (required by ABI v1)")
        if not isinstance(ty, wasmtime.FuncType) or func_signature(ty) != expected:
            raise BadModuleError(
                f"module exports {name} with the wrong type (expected {signature_text(expected)})"
            )
    optional: set[str] = set()
    for name, expected in OPTIONAL_EXPORTS.items():
        ty = exports.get(name)
        if ty is None:
            continue
        if not isinstance(ty, wasmtime.FuncType) or func_signature(ty) != expected:
            raise BadModuleError(
                f"module exports {name} with the wrong type (expected {signature_text(expected)})"
            )
        optional.add(name)
    return tuple(import_names), frozenset(optional)


def pack_strings(items: Sequence[str]) -> bytes:
    """msgpack array of strings (lookup results)."""
    data: bytes = msgpack.packb(list(items), use_bin_type=True)
    return data
