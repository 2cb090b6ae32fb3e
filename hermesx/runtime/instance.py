"""The bridge into one atom instance, through wasmtime's C API (docs/DESIGN.md §3).

:class:`WasmInstance` calls an atom's exports and reads and writes its memory
through ``wasmtime_func_call_unchecked`` and ``memmove`` on the memory's base
address. The plain Python wrapper costs 8-25 µs per crossing, the C API about
1 µs (measured with `hermesx bench runtime`), and every invocation crosses at least three times.

A Python exception cannot cross wasm frames as such: a host function that fails
stores the exception on the instance and returns a trap; the call that entered
wasm re-raises it as a :class:`WasmFault` (see :meth:`WasmInstance.call`).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence
from typing import Any

import wasmtime
from wasmtime import _bindings as ffi

from hermesx.core.errors import BadModuleError
from hermesx.runtime.abi import OPTIONAL_EXPORTS, REQUIRED_EXPORTS

__all__ = ["BadAllocError", "BadPointerError", "WasmFault", "WasmInstance"]

_call_unchecked = ffi._wasmtime_func_call_unchecked
_memory_data = ffi._wasmtime_memory_data
_memory_data_size = ffi._wasmtime_memory_data_size
_trap_new = ffi._wasmtime_trap_new
_RawArgs = ffi.wasmtime_val_raw_t * 8
_TrapPtr = ctypes.POINTER(ffi.wasm_trap_t)
_OUT = struct.Struct("<ii")


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


class BadPointerError(Exception):
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

    def check(self, ptr: int, length: int) -> None:
        """Raise BadPointerError unless ``ptr``..``ptr + length`` lies in the memory."""
        if ptr < 0 or length < 0:
            raise BadPointerError(f"negative pointer or length ({ptr}, {length})")
        end = ptr + length
        if end > self._size and end > self.refresh_memory():
            raise BadPointerError(f"range {ptr}+{length} is outside memory of {self._size} bytes")

    def read(self, ptr: int, length: int) -> bytes:
        self.check(ptr, length)
        return ctypes.string_at(self._base + ptr, length) if length else b""

    def write(self, ptr: int, data: bytes) -> None:
        self.check(ptr, len(data))
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
        self.check(out, 8)
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
