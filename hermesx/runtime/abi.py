"""The ``hx`` imports of ABI v1 and the low-level bridge into an atom (DESIGN.md §3).

atoms/ABI.md is the contract; this module implements its wire-level half:

* the table of imports (name -> signature) and exports the runtime checks on load;
* :class:`WasmInstance`, which calls an atom's exports and reads and writes its
  memory through wasmtime's C API (``wasmtime_func_call_unchecked``, unchecked
  host functions, ``memmove`` on the memory's base address). The plain Python
  wrapper costs 8-25 µs per crossing, the C API about 1 µs (PLATFORM.md), and
  every invocation crosses at least three times;
* the host functions themselves: they decode pointers and lengths, check them
  against the memory, and hand the decoded request to :class:`Syscalls`, which
  the runtime's Atom implements (the behaviour lives there).

A Python exception cannot cross wasm frames as such: a host function that fails
stores the exception on the instance and returns a trap; the call that entered
wasm re-raises it (see :meth:`WasmInstance.call`).
"""

from __future__ import annotations

import ctypes
import logging
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import wasmtime
from wasmtime import _bindings as ffi

from hermesx.core.errors import BadModuleError

__all__ = [
    "ABI_VERSION",
    "IMPORTS",
    "MAX_LOG_LINE_BYTES",
    "OPTIONAL_EXPORTS",
    "REQUIRED_EXPORTS",
    "BadAllocError",
    "Syscalls",
    "WasmFault",
    "WasmInstance",
    "make_imports",
]

logger = logging.getLogger(__name__)

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

_LOOKUP_MODES = {0: "exact", 1: "any", 2: "all"}
_LOG_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}

# Status codes of ABI.md.
STATUS_OK = 0
STATUS_ERROR = 1
STATUS_INVALID = -1

_call_unchecked = ffi._wasmtime_func_call_unchecked
_memory_data = ffi._wasmtime_memory_data
_memory_data_size = ffi._wasmtime_memory_data_size
_trap_new = ffi._wasmtime_trap_new
_RawArgs = ffi.wasmtime_val_raw_t * 8
_TrapPtr = ctypes.POINTER(ffi.wasm_trap_t)
_Callback = ffi.wasmtime_func_unchecked_callback_t
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NO_FINALIZER = _Finalizer(lambda _env: None)
_VALTYPE = {"i": wasmtime.ValType.i32, "I": wasmtime.ValType.i64}
_OUT = struct.Struct("<ii")
_MAX_I32 = 2**31 - 1
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


class WasmFault(Exception):
    """A call into the atom trapped. The runtime turns it into an AtomError."""

    def __init__(self, message: str, *, interrupted: bool, cause: BaseException | None) -> None:
        super().__init__(message)
        self.message = message
        # True when the epoch deadline stopped the code.
        self.interrupted = interrupted
        # The exception a host function raised, if the trap came from one.
        self.cause = cause


class BadAllocError(Exception):
    """The atom's ``hx_alloc`` returned a pointer outside its memory (an atom bug)."""

    def __init__(self, ptr: int, length: int, memory_size: int) -> None:
        super().__init__(f"hx_alloc({length}) returned a bad pointer {ptr & 0xFFFFFFFF:#x}")
        self.ptr = ptr & 0xFFFFFFFF
        self.length = length
        self.memory_size = memory_size


class Syscalls(Protocol):
    """What the host functions need from the atom that owns the instance."""

    guid: str
    kv: dict[bytes, bytes]

    @property
    def node_name(self) -> str: ...

    def sys_reply(self, data: bytes) -> None: ...

    def sys_reply_too_large(self, length: int) -> None: ...

    def sys_log(self, level: int, text: str) -> None: ...

    def sys_kv_put(self, key: bytes, value: bytes) -> int: ...

    def sys_kv_del(self, key: bytes) -> int: ...

    def sys_invoke(self, target: str, method: str, args: bytes) -> tuple[int, bytes]: ...

    def sys_invoke_async(self, target: str, method: str, args: bytes) -> int: ...

    def sys_send(self, target: str, code: int, payload: bytes) -> int: ...

    def sys_recv(self, timeout_ms: int) -> int: ...

    def sys_yield(self) -> int: ...

    def sys_lookup(self, mode: str, scope: str | None, pattern: str) -> tuple[int, bytes]: ...

    def sys_alias(self, add: bool, scope: str, alias: str) -> int: ...

    def sys_move_to(self, node: str) -> int: ...

    def sys_checkpoint(self) -> int: ...


class _BadPointer(Exception):
    """An atom passed a pointer/length outside its memory: the syscall returns -1."""


class WasmInstance:
    """One instantiated atom: calls into its exports and access to its memory.

    Not thread-safe: the runtime lets one thread at a time use an instance.
    """

    def __init__(self, store: wasmtime.Store, max_payload_bytes: int) -> None:
        self.store = store
        self.ctx = store._context()
        self.max_payload = max_payload_bytes
        self.host_error: BaseException | None = None
        self._raw = _RawArgs()
        self._memory: Any = None
        self._memory_ref: Any = None
        self._base = 0
        self._size = 0
        self.exports: dict[str, Any] = {}
        self._func_refs: dict[str, Any] = {}
        self.instance: wasmtime.Instance | None = None

    def bind(self, instance: wasmtime.Instance) -> None:
        """Attach the instance's exports once instantiation succeeded."""
        self.instance = instance
        exports = instance.exports(self.store)
        memory = exports["memory"]
        if not isinstance(memory, wasmtime.Memory):
            raise BadModuleError("module does not export its memory as 'memory'")
        self._memory = memory
        self._memory_ref = ctypes.byref(memory._memory)
        for name in (*REQUIRED_EXPORTS, *OPTIONAL_EXPORTS):
            item = exports.get(name)
            if isinstance(item, wasmtime.Func):
                self.exports[name] = item
                self._func_refs[name] = ctypes.byref(item._func)
        self.refresh_memory()

    @property
    def memory(self) -> wasmtime.Memory:
        memory: wasmtime.Memory = self._memory
        return memory

    def has(self, export: str) -> bool:
        return export in self._func_refs

    # -- memory -------------------------------------------------------------

    def refresh_memory(self) -> int:
        """Re-read base and size (the memory never moves: memory_may_move is off)."""
        ptr = _memory_data(self.ctx, self._memory_ref)
        self._base = ctypes.cast(ptr, ctypes.c_void_p).value or 0
        self._size = _memory_data_size(self.ctx, self._memory_ref)
        return self._size

    @property
    def memory_size(self) -> int:
        return self.refresh_memory()

    @property
    def base(self) -> int:
        return self._base

    def _check(self, ptr: int, length: int) -> None:
        if ptr < 0 or length < 0:
            raise _BadPointer(f"negative pointer or length ({ptr}, {length})")
        end = ptr + length
        if end > self._size and end > self.refresh_memory():
            raise _BadPointer(f"range {ptr}+{length} is outside memory of {self._size} bytes")

    def read(self, ptr: int, length: int) -> bytes:
        self._check(ptr, length)
        return ctypes.string_at(self._base + ptr, length) if length else b""

    def write(self, ptr: int, data: bytes) -> None:
        self._check(ptr, len(data))
        ctypes.memmove(self._base + ptr, data, len(data))

    def alloc(self, length: int) -> int:
        """Ask the atom for a buffer of ``length`` bytes (its ``hx_alloc``)."""
        ptr = self.call("hx_alloc", (length,), True)
        assert ptr is not None
        if not length:
            return ptr
        if ptr == 0:
            # ABI.md: hx_alloc returns 0 when the atom cannot get the memory.
            raise WasmFault(
                f"hx_alloc({length}) returned 0 (no memory)",
                interrupted=False,
                cause=MemoryError(f"hx_alloc({length}) failed"),
            )
        if ptr < 0 or (ptr + length > self._size and ptr + length > self.refresh_memory()):
            raise WasmFault(
                f"hx_alloc({length}) returned a bad pointer {ptr & 0xFFFFFFFF:#x}: the buffer "
                f"would end at byte {(ptr & 0xFFFFFFFF) + length}, outside the atom's memory "
                f"of {self._size} bytes",
                interrupted=False,
                cause=BadAllocError(ptr, length, self._size),
            )
        return ptr

    def alloc_write(self, data: bytes) -> int:
        ptr = self.alloc(len(data))
        if data:
            ctypes.memmove(self._base + ptr, data, len(data))
        return ptr

    def write_out(self, out: int, data: bytes) -> None:
        """Fill an ABI "out" parameter: a fresh atom buffer holding ``data``."""
        self._check(out, 8)
        ptr = self.alloc_write(data)
        ctypes.memmove(self._base + out, _OUT.pack(ptr, len(data)), 8)

    # -- calls --------------------------------------------------------------

    def call(self, export: str, args: Sequence[int], has_result: bool) -> int | None:
        """Call an export taking and returning i32 values.

        Raises WasmFault when the atom traps (deadline included).
        """
        raw = self._raw
        for i, value in enumerate(args):
            raw[i].i32 = value
        trap = _TrapPtr()
        error = _call_unchecked(self.ctx, self._func_refs[export], raw, 8, ctypes.byref(trap))
        if error:
            err = wasmtime.WasmtimeError._from_ptr(error)
            cause = self._take_host_error()
            # wasmtime's text is a backtrace plus the cause; the cause is the news.
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            reason = str(cause) if cause is not None else (lines[-1] if lines else "failed")
            raise WasmFault(f"{export}: {reason}", interrupted=False, cause=cause)
        if trap:
            raise self._fault(export, wasmtime.Trap._from_ptr(trap))
        return raw[0].i32 if has_result else None

    def _take_host_error(self) -> BaseException | None:
        cause = self.host_error
        self.host_error = None
        return cause

    def _fault(self, export: str, trap: wasmtime.Trap) -> WasmFault:
        cause = self._take_host_error()
        if cause is not None:
            return WasmFault(str(cause), interrupted=False, cause=cause)
        code = trap.trap_code
        interrupted = code == wasmtime.TrapCode.INTERRUPT
        # wasmtime puts a backtrace first and the reason ("wasm trap: ...") last.
        lines = [line.strip() for line in trap.message.splitlines() if line.strip()]
        message = lines[-1] if lines else "trap"
        return WasmFault(f"{export}: {message}", interrupted=interrupted, cause=None)

    def host_trap(self, exc: BaseException) -> int:
        """Record ``exc`` and return a trap for a host function to hand back."""
        self.host_error = exc
        msg = f"host function failed: {exc}".encode()
        trap = _trap_new(msg, len(msg))
        return ctypes.cast(trap, ctypes.c_void_p).value or 0


@dataclass(frozen=True, slots=True)
class _HostFunc:
    func: wasmtime.Func
    callback: Any  # the ctypes callback object; kept alive with the store


def _func_type(sig: tuple[str, str]) -> wasmtime.FuncType:
    return wasmtime.FuncType([_VALTYPE[c]() for c in sig[0]], [_VALTYPE[c]() for c in sig[1]])


def _new_host_func(
    inst: WasmInstance, sig: tuple[str, str], body: Callable[[Any], None]
) -> _HostFunc:
    def callback(_env: Any, _caller: Any, raw: Any, _n: int) -> int:
        try:
            body(raw)
            return 0
        except BaseException as exc:
            return inst.host_trap(exc)

    cb = _Callback(callback)
    func_struct = ffi.wasmtime_func_t()
    ty = _func_type(sig)
    ffi.wasmtime_func_new_unchecked(
        inst.ctx, ty.ptr(), cb, None, _NO_FINALIZER, ctypes.byref(func_struct)
    )
    return _HostFunc(wasmtime.Func._from_raw(func_struct), cb)


def _text(inst: WasmInstance, ptr: int, length: int) -> str:
    return inst.read(ptr, length).decode("utf-8", errors="replace")


def make_imports(
    inst: WasmInstance, import_names: Sequence[str], sys: Syscalls
) -> tuple[list[wasmtime.Func], list[Any]]:
    """Host functions for ``import_names`` (the module's imports, in order).

    Returns the functions to instantiate with and the objects to keep alive as
    long as the store lives.
    """
    max_payload = inst.max_payload

    def reply(raw: Any) -> None:
        ptr, length = raw[0].i32, raw[1].i32
        if length > max_payload:
            sys.sys_reply_too_large(length)
            return
        sys.sys_reply(inst.read(ptr, length))

    def log(raw: Any) -> None:
        ptr, length = raw[1].i32, raw[2].i32
        inst._check(ptr, length)
        # Only the part of a line that can be logged is copied out of the atom.
        text = inst.read(ptr, min(length, MAX_LOG_LINE_BYTES)).decode("utf-8", errors="replace")
        if length > MAX_LOG_LINE_BYTES:
            text += f" [... {length - MAX_LOG_LINE_BYTES} more bytes cut]"
        sys.sys_log(raw[0].i32, text)

    def now_ms(raw: Any) -> None:
        raw[0].i64 = time.time_ns() // 1_000_000

    def copy_text(raw: Any, text: str) -> None:
        data = text.encode("utf-8")
        buf, cap = raw[0].i32, raw[1].i32
        try:
            inst.write(buf, data[: max(cap, 0)])
        except _BadPointer:
            raw[0].i32 = STATUS_INVALID
            return
        raw[0].i32 = len(data)

    def self_guid(raw: Any) -> None:
        copy_text(raw, sys.guid)

    def node_name(raw: Any) -> None:
        copy_text(raw, sys.node_name)

    def guarded(fn: Callable[[Any], int]) -> Callable[[Any], None]:
        """Bad pointers give status -1 instead of failing the call."""

        def body(raw: Any) -> None:
            try:
                raw[0].i32 = fn(raw)
            except _BadPointer as exc:
                sys.sys_log(2, f"invalid syscall argument: {exc}")
                raw[0].i32 = STATUS_INVALID

        return body

    def read_args(ptr: int, length: int) -> bytes:
        if length > max_payload:
            raise _BadPointer(f"arguments of {length} bytes exceed the {max_payload}-byte limit")
        return inst.read(ptr, length)

    def invoke(raw: Any) -> int:
        target = _text(inst, raw[0].i32, raw[1].i32)
        method = _text(inst, raw[2].i32, raw[3].i32)
        args = read_args(raw[4].i32, raw[5].i32)
        out = raw[6].i32
        inst._check(out, 8)
        status, data = sys.sys_invoke(target, method, args)
        inst.write_out(out, data)
        return status

    def invoke_async(raw: Any) -> int:
        target = _text(inst, raw[0].i32, raw[1].i32)
        method = _text(inst, raw[2].i32, raw[3].i32)
        args = read_args(raw[4].i32, raw[5].i32)
        return sys.sys_invoke_async(target, method, args)

    def send(raw: Any) -> int:
        target = _text(inst, raw[0].i32, raw[1].i32)
        payload = read_args(raw[3].i32, raw[4].i32)
        return sys.sys_send(target, raw[2].i32, payload)

    def recv(raw: Any) -> int:
        return sys.sys_recv(raw[0].i32)

    def yield_(raw: Any) -> int:
        return sys.sys_yield()

    def kv_get(raw: Any) -> int:
        key = inst.read(raw[0].i32, raw[1].i32)
        out = raw[2].i32
        inst._check(out, 8)
        value = sys.kv.get(key)
        if value is None:
            return STATUS_ERROR
        inst.write_out(out, value)
        return STATUS_OK

    def kv_put(raw: Any) -> int:
        key = inst.read(raw[0].i32, raw[1].i32)
        return sys.sys_kv_put(key, read_args(raw[2].i32, raw[3].i32))

    def kv_del(raw: Any) -> int:
        return sys.sys_kv_del(inst.read(raw[0].i32, raw[1].i32))

    def kv_keys(raw: Any) -> int:
        prefix = inst.read(raw[0].i32, raw[1].i32)
        out = raw[2].i32
        inst._check(out, 8)
        keys = sorted(k for k in sys.kv if k.startswith(prefix))
        inst.write_out(out, msgpack.packb(keys, use_bin_type=True))
        return len(keys)

    def lookup(raw: Any) -> int:
        mode = _LOOKUP_MODES.get(raw[0].i32)
        if mode is None:
            return STATUS_INVALID
        scope = _text(inst, raw[1].i32, raw[2].i32) if raw[2].i32 else None
        pattern = _text(inst, raw[3].i32, raw[4].i32)
        out = raw[5].i32
        inst._check(out, 8)
        status, data = sys.sys_lookup(mode, scope, pattern)
        inst.write_out(out, data)
        return status

    def alias_add(raw: Any) -> int:
        return sys.sys_alias(
            True, _text(inst, raw[0].i32, raw[1].i32), _text(inst, raw[2].i32, raw[3].i32)
        )

    def alias_remove(raw: Any) -> int:
        return sys.sys_alias(
            False, _text(inst, raw[0].i32, raw[1].i32), _text(inst, raw[2].i32, raw[3].i32)
        )

    def move_to(raw: Any) -> int:
        return sys.sys_move_to(_text(inst, raw[0].i32, raw[1].i32))

    def checkpoint(raw: Any) -> int:
        return sys.sys_checkpoint()

    bodies: dict[str, Callable[[Any], None]] = {
        "reply": reply,
        "log": log,
        "now_ms": now_ms,
        "self_guid": self_guid,
        "node_name": node_name,
        "invoke": guarded(invoke),
        "invoke_async": guarded(invoke_async),
        "send": guarded(send),
        "recv": guarded(recv),
        "yield": guarded(yield_),
        "kv_get": guarded(kv_get),
        "kv_put": guarded(kv_put),
        "kv_del": guarded(kv_del),
        "kv_keys": guarded(kv_keys),
        "lookup": guarded(lookup),
        "alias_add": guarded(alias_add),
        "alias_remove": guarded(alias_remove),
        "move_to": guarded(move_to),
        "checkpoint": guarded(checkpoint),
    }
    funcs: list[wasmtime.Func] = []
    keep: list[Any] = []
    for name in import_names:
        if name not in bodies:
            raise BadModuleError(f"module imports hx.{name}, which ABI v{ABI_VERSION} lacks")
        host = _new_host_func(inst, IMPORTS[name], bodies[name])
        funcs.append(host.func)
        keep.append(host.callback)
    return funcs, keep


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
