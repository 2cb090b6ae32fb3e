"""The bridge into one atom instance, through wasmtime's C API (docs/DESIGN.md §3).

:class:`WasmInstance` calls an atom's exports through
``wasmtime_func_call_unchecked`` and reads and writes its memory through a
memoryview over the memory's (fixed) base address. The plain Python wrapper
costs 8-25 µs per crossing; the C API through wasmtime-py's declared bindings
about 2 µs, most of it ctypes converting each argument; the same C function
called with ready ctypes objects and no declared argument types about 0.4 µs
(docs/PERFORMANCE.md). An invocation crosses three times (``hx_alloc``,
``hx_invoke``, and ``hx.reply`` back), or once for an atom with an inbox
(atoms/ABI.md "The inbox"): a call from idle writes its inputs there and
reads the reply from its slot when ``hx_invoke`` returns. That call, the one
every call of such an atom from idle makes, runs in C when the runtime's C
crossing could be built (hermesx/runtime/native.py, about 0.4 µs against
about 1.6 µs of Python and ctypes); the Python path below does the same.

A Python exception cannot cross wasm frames as such: a host function that fails
stores the exception on the instance and returns a trap; the call that entered
wasm re-raises it as a :class:`WasmFault` (see :meth:`WasmInstance.call`).
"""

from __future__ import annotations

import ctypes
import struct
import sys
from collections.abc import Sequence
from typing import Any

import wasmtime
from wasmtime import _bindings as ffi
from wasmtime._ffi import dll as _wasmtime_dll

from hermesx.core.errors import BadModuleError
from hermesx.runtime.abi import OPTIONAL_EXPORTS, REQUIRED_EXPORTS
from hermesx.runtime.native import crossing_module

__all__ = ["BadAllocError", "BadPointerError", "WasmFault", "WasmInstance"]


def _c_function(name: str, restype: Any) -> Any:
    """wasmtime's C function ``name``, called without ctypes converting its arguments.

    wasmtime-py declares ``argtypes`` on its bindings, and converting five
    arguments costs four times the call into wasm itself. Callers pass ready
    ctypes objects (pointers, ``byref``, ``c_size_t``/``c_uint64`` values),
    never plain ints, which would go as C ints.
    """
    # Indexing makes a new function object: wasmtime-py's own (dll.name) keeps its argtypes.
    fn: Any = _wasmtime_dll[name]
    fn.argtypes = None
    fn.restype = restype
    return fn


_call_unchecked = _c_function("wasmtime_func_call_unchecked", ctypes.c_void_p)
_set_epoch_deadline = _c_function("wasmtime_context_set_epoch_deadline", None)
_memory_data = ffi._wasmtime_memory_data
_memory_data_size = ffi._wasmtime_memory_data_size
_trap_new = ffi._wasmtime_trap_new
_RAW_SLOTS = 8
_RawArgs = ffi.wasmtime_val_raw_t * _RAW_SLOTS
_RAW_STRIDE = ctypes.sizeof(ffi.wasmtime_val_raw_t)
_TrapPtr = ctypes.POINTER(ffi.wasm_trap_t)
_ErrorPtr = ctypes.POINTER(ffi.wasmtime_error_t)
_OUT = struct.Struct("<ii")
# i32 values in the slots of the args-and-results array (a result comes back in slot 0).
_RESULT = struct.Struct("<i")
_ONE_U32 = struct.Struct("<I")
_U32 = 0xFFFFFFFF
# A call reads and writes the args array and the inbox's reply slot through
# memoryviews cast to 32-bit items (an item costs less than a struct call): in the
# host's order, which is wasm's (little-endian) on every host hermesx runs on.
if sys.byteorder != "little":
    raise ImportError("hermesx's runtime needs a little-endian host (wasm's byte order)")
# The i32 slots of the args array, counted in 4-byte items (a slot is _RAW_STRIDE bytes).
_ARG1, _ARG2, _ARG3 = (_RAW_STRIDE // 4) * 1, (_RAW_STRIDE // 4) * 2, (_RAW_STRIDE // 4) * 3
# The inbox: reply slot (ptr, len), input capacity, reserved; then the inputs.
_INBOX_HEADER = 16
_NO_REPLY = -1  # the slot's length when it holds no reply
_LEN = struct.Struct("<i")


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


class _Faults:
    """What a failed crossing leaves, and the WasmFault it becomes (WasmInstance's base)."""

    host_error: BaseException | None
    _trap_slot: Any
    _slot_i32: memoryview | None

    def clear_reply(self) -> None:
        """Empty the reply slot (after a trap, a handler, a restore)."""
        if self._slot_i32 is not None:
            self._slot_i32[1] = _NO_REPLY

    def _failure(self, export: str, error: int | None) -> WasmFault:
        # What a trapped entry left in the reply slot is no reply.
        self.clear_reply()
        if error is not None:
            err = wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, _ErrorPtr))
            cause = self._take_host_error()
            # wasmtime's text is a backtrace plus the cause; the cause is the news.
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            reason = str(cause) if cause is not None else (lines[-1] if lines else "failed")
            return WasmFault(f"{export}: {reason}", interrupted=False, cause=cause)
        trap = ctypes.cast(self._trap_slot.value or 0, _TrapPtr)
        self._trap_slot.value = None  # the Trap owns it now; the slot serves the next call
        cause = self._take_host_error()
        if cause is not None:
            return WasmFault(str(cause), interrupted=False, cause=cause)
        return _trap_fault(export, wasmtime.Trap._from_ptr(trap))

    def _take_host_error(self) -> BaseException | None:
        cause = self.host_error
        self.host_error = None
        return cause

    def host_trap(self, exc: BaseException) -> int:
        """Record ``exc`` and return a trap for a host function to hand back."""
        self.host_error = exc
        msg = f"host function failed: {exc}".encode()
        trap = _trap_new(msg, len(msg))
        return ctypes.cast(trap, ctypes.c_void_p).value or 0


class WasmInstance(_Faults):
    """One instantiated atom: calls into its exports and access to its memory.

    Not thread-safe: the runtime lets one thread at a time use an instance.
    """

    def __init__(self, store: wasmtime.Store, max_payload_bytes: int, epochs: Any = None) -> None:
        self.store = store
        # What counts the engine's epoch ticks (an ``epoch`` int: the Runtime), if any.
        self._epochs = epochs
        # The deadline set last: the count of ticks then, and its ticks from then.
        self._set_epoch = -1
        self._set_ticks = -1
        self.ctx = store._context()
        self.max_payload = max_payload_bytes
        self.host_error: BaseException | None = None
        self._raw = _RawArgs()
        self._raw_view = memoryview(self._raw).cast("B")
        self._raw_u32 = self._raw_view.cast("I")
        self._raw_i32 = self._raw_view.cast("i")
        # The crossing's arguments as ready ctypes parameters, whose values ctypes copies
        # (for a ctypes object it makes one per call: 50 ns of a 0.4 µs crossing).
        self._ctx_p = ctypes.c_void_p.from_param(ctypes.cast(self.ctx, ctypes.c_void_p).value)
        self._raw_p = ctypes.byref(self._raw)
        self._len_p = ctypes.c_size_t.from_param(_RAW_SLOTS)
        # A call from idle into the inbox has an args array of its own: no other entry
        # uses it (a nested entry is not idle), so it is there to read after the call.
        self._in_raw = _RawArgs()
        self._in_i32 = memoryview(self._in_raw).cast("B").cast("i")
        # That call in C (hermesx/runtime/native.py), when the atom has an inbox and
        # the C crossing could be built; where it stores an error wasmtime returned.
        self._crossing: Any = None
        self._in_error = ctypes.c_void_p()
        # One trap slot for every call, nested ones included: wasmtime fills it
        # only when a call traps, and the fault handling empties it again.
        self._trap = _TrapPtr()
        self._trap_ref = ctypes.byref(self._trap)
        self._trap_slot = ctypes.c_void_p.from_buffer(self._trap)
        self._deadline = ctypes.c_uint64(0)
        self._memory: Any = None
        self._memory_ref: Any = None
        self._base = 0
        self._size = 0
        self._view = memoryview(bytearray())
        self._chars: Any = b""
        self.exports: dict[str, Any] = {}
        self._func_refs: dict[str, Any] = {}
        self._alloc_ref: Any = None
        self._invoke_ref: Any = None
        # The inbox (0: the atom has none): its reply slot, inputs and their capacity.
        self._slot = 0
        # The reply slot as two i32 (pointer, length); None without an inbox.
        self._slot_i32: memoryview | None = None
        self._inbox = 0
        self._inbox_cap = -1
        # The reply the last invoke() found in the slot: bytes, a length over the
        # payload limit, or None (no inbox, or the atom replied through hx.reply).
        self.reply: bytes | int | None = None
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
        self._alloc_ref = self._func_refs.get("hx_alloc")
        self._invoke_ref = self._func_refs.get("hx_invoke")
        self.refresh_memory()
        inbox_ref = self._func_refs.get("hx_inbox")
        if inbox_ref is not None:
            self._bind_inbox(inbox_ref)

    def _bind_inbox(self, inbox_ref: Any) -> None:
        """Ask the atom where its inbox is (once: its address is fixed, ABI.md)."""
        try:
            ptr = self._call(inbox_ref, "hx_inbox") & _U32
        except WasmFault as fault:
            raise BadModuleError(f"the atom's hx_inbox failed: {fault.message}") from None
        cap = -1
        if ptr > 0 and ptr + _INBOX_HEADER <= self._size:
            cap = _LEN.unpack_from(self._view, ptr + 8)[0]
        if cap < 0 or ptr + _INBOX_HEADER + cap > self._size:
            raise BadModuleError(
                f"the atom's hx_inbox returned a bad buffer {ptr:#x} (input capacity {cap}) "
                f"for its memory of {self._size} bytes"
            )
        self._slot, self._inbox, self._inbox_cap = ptr, ptr + _INBOX_HEADER, cap
        # Stays valid as the memory grows: its base never moves (memory_may_move off).
        self._slot_i32 = self._view[ptr : ptr + 8].cast("i")
        self.clear_reply()
        native = crossing_module()
        if native is not None:  # its arguments: the addresses it writes and reads
            self._crossing = native.Crossing(
                ctypes.cast(_call_unchecked, ctypes.c_void_p).value,
                ctypes.cast(self.ctx, ctypes.c_void_p).value,
                ctypes.addressof(self.exports["hx_invoke"]._func),
                ctypes.addressof(self._in_raw),
                _RAW_SLOTS,
                ctypes.addressof(self._trap),
                ctypes.addressof(self._in_error),
                self._base,
                self._inbox,
                cap,
                ptr,
                self._size,
                self.max_payload,
            )

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
        base = ctypes.cast(ptr, ctypes.c_void_p).value or 0
        size: int = _memory_data_size(self.ctx, self._memory_ref)
        if base != self._base or size != self._size:
            self._base, self._size = base, size
            # Copies in go through this view (cheaper than ctypes' memmove), copies out
            # through a slice of its char array (the bytes at once). Both grow with it.
            chars = (ctypes.c_char * size).from_address(base) if size else None
            self._chars = chars if chars is not None else b""
            self._view = memoryview(chars if chars is not None else bytearray()).cast("B")
            if self._slot:  # the slot's own view, in case the memory did move
                self._slot_i32 = self._view[self._slot : self._slot + 8].cast("i")
            if self._crossing is not None:  # its base never moves: only the size
                self._crossing.set_size(size)
        return size

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
        # Inside the known size (every reply): no further check, no call.
        if ptr < 0 or length < 0 or ptr + length > self._size:
            self.check(ptr, length)
        data: bytes = self._chars[ptr : ptr + length]
        return data

    def write(self, ptr: int, data: bytes) -> None:
        if ptr < 0 or ptr + len(data) > self._size:
            self.check(ptr, len(data))
        self._view[ptr : ptr + len(data)] = data

    def alloc(self, length: int) -> int:
        """Ask the atom for a buffer of ``length`` bytes (its ``hx_alloc``)."""
        _ONE_U32.pack_into(self._raw_view, 0, length)
        ptr = self._call(self._alloc_ref, "hx_alloc")
        if length and (ptr <= 0 or ptr + length > self._size):
            _check_alloc(self, ptr, length)
        return ptr

    def alloc_write(self, data: bytes) -> int:
        ptr = self.alloc(len(data))
        if data:
            self._view[ptr : ptr + len(data)] = data
        return ptr

    def write_out(self, out: int, data: bytes) -> None:
        """Fill an ABI "out" parameter: a fresh atom buffer holding ``data``."""
        self.check(out, 8)
        ptr = self.alloc_write(data)
        _OUT.pack_into(self._view, out, ptr, len(data))

    # -- calls --------------------------------------------------------------

    def set_deadline(self, ticks: int) -> None:
        """The epoch deadline (CPU budget) of the code about to run: ``ticks`` from now.

        The deadline is the engine's epoch plus ``ticks``; when the same ``ticks``
        were set since the last tick, it is set already. The ticker bumps the
        engine's epoch, then its count: a deadline set between the two can come
        one tick early, which the extra tick of ``Runtime.ticks_for`` covers.
        """
        epochs = self._epochs
        if epochs is not None:
            epoch = epochs.epoch
            if epoch == self._set_epoch and ticks == self._set_ticks:
                return
            self._set_epoch, self._set_ticks = epoch, ticks
        value = self._deadline
        if value.value != ticks:  # calls in a row usually get the atom's whole budget
            value = self._deadline = ctypes.c_uint64(ticks)
        _set_epoch_deadline(self.ctx, value)

    def invoke(self, method: bytes, args: bytes, idle: bool, ticks: int) -> int:
        """Run ``hx_invoke`` with ``method`` and ``args`` in the atom, ``ticks`` of CPU
        budget ahead (see :meth:`set_deadline`); its status.

        ``idle``: no other entry of the atom is under way, so the inputs may go
        in the inbox when it has one; else (or when they do not fit) into a
        fresh buffer from ``hx_alloc``. What the atom left in the inbox's reply
        slot is in :attr:`reply` afterwards (see :meth:`take_reply`). Raises
        WasmFault when the atom traps (deadline included) or its reply slot
        points outside its memory.

        Every call runs this: the deadline, the crossing and the slot are written
        out here, not through the helpers, each Python call costing about 0.1 µs.
        """
        epochs = self._epochs
        if epochs is None or epochs.epoch != self._set_epoch or ticks != self._set_ticks:
            self.set_deadline(ticks)
        split = len(method)
        end = split + len(args)
        if idle and end <= self._inbox_cap:
            crossing = self._crossing
            if crossing is not None:  # the C crossing (hermesx/runtime/native.py)
                got = crossing.invoke(method, args)
                if got is not None:  # status 0 and a good reply, taken from the slot
                    self.reply = got
                    return 0
                return self._after_crossing()
            ptr = self._inbox  # inside the memory: checked when bound, and memory never shrinks
            self._view[ptr : ptr + end] = method + args  # small: one copy into wasm, not two
        else:
            ptr = self._alloc_inputs(method, args)
        raw = self._raw_u32
        raw[0] = ptr
        raw[_ARG1] = split
        raw[_ARG2] = (ptr + split) & _U32
        raw[_ARG3] = end - split
        error = _call_unchecked(
            self._ctx_p, self._invoke_ref, self._raw_p, self._len_p, self._trap_ref
        )
        if error is not None or self._trap:
            raise self._failure("hx_invoke", error)
        reply: bytes | int | None = None
        slot = self._slot_i32
        if slot is not None:
            length = slot[1]
            if length != _NO_REPLY:
                slot[1] = _NO_REPLY
                ptr = slot[0] & _U32
                if length > self.max_payload:
                    reply = length
                elif length >= 0 and ptr + length <= self._size:
                    reply = self._chars[ptr : ptr + length]
                else:
                    self.reply = None
                    reply = self._slot_read(ptr, length)
        self.reply = reply
        status: int = self._raw_i32[0]
        return status

    def _after_crossing(self) -> int:
        """After the C crossing returned no reply: its error or trap raised, else the
        status, with what the slot holds (or None) in :attr:`reply`."""
        error = self._in_error.value
        self._in_error.value = None
        if error is not None or self._trap:
            raise self._failure("hx_invoke", error)
        self.reply = None
        slot: Any = self._slot_i32
        length = slot[1]
        if length != _NO_REPLY:
            slot[1] = _NO_REPLY
            self.reply = self._slot_read(slot[0] & _U32, length)
        status: int = self._in_i32[0]
        return status

    def _alloc_inputs(self, method: bytes, args: bytes) -> int:
        """Method and arguments in a fresh buffer from ``hx_alloc`` (no inbox, a
        nested entry, or inputs beyond the inbox); the buffer's address, as u32."""
        split = len(method)
        end = split + len(args)
        _ONE_U32.pack_into(self._raw_view, 0, end)
        ptr = self._call(self._alloc_ref, "hx_alloc")
        if end:
            if ptr <= 0 or ptr + end > self._size:
                _check_alloc(self, ptr, end)
            view = self._view
            view[ptr : ptr + split] = method
            view[ptr + split : ptr + end] = args
        return ptr & _U32

    def _slot_read(self, ptr: int, length: int) -> bytes | int:
        """A reply the slot holds outside what the call's fast path reads: beyond the
        memory's known size (it grew), over the payload limit (its length), or bad."""
        if length > self.max_payload:
            return length
        try:
            return self.read(ptr, length)
        except BadPointerError as exc:
            raise WasmFault(
                f"hx_invoke: its reply slot is bad: {exc}", interrupted=False, cause=None
            ) from None

    def take_reply(self) -> bytes | int | None:
        """The reply in the inbox's slot, and the slot emptied: its bytes, its length
        when over the payload limit, None when the slot holds none (or there is no
        inbox: replies then came through ``hx.reply``). Raises BadPointerError when
        the slot points outside the memory."""
        slot = self._slot_i32
        if slot is None:
            return None
        length: int = slot[1]
        if length == _NO_REPLY:
            return None
        slot[1] = _NO_REPLY
        if length > self.max_payload:
            return length
        return self.read(slot[0] & _U32, length)

    def call(self, export: str, args: Sequence[int], has_result: bool) -> int | None:
        """Call an export taking and returning i32 values.

        Raises WasmFault when the atom traps (deadline included).
        """
        raw = self._raw
        for i, value in enumerate(args):
            raw[i].i32 = value
        result = self._call(self._func_refs[export], export)
        return result if has_result else None

    def _call(self, func_ref: Any, export: str) -> int:
        """Call an export whose arguments are in place; the i32 in the result slot."""
        error = _call_unchecked(self._ctx_p, func_ref, self._raw_p, self._len_p, self._trap_ref)
        if error is not None or self._trap:
            raise self._failure(export, error)
        result: int = _RESULT.unpack_from(self._raw_view)[0]
        return result


def _check_alloc(inst: WasmInstance, ptr: int, length: int) -> None:
    """Raise WasmFault unless ``hx_alloc``'s ``ptr`` holds ``length`` bytes in ``inst``'s
    memory (which may have grown)."""
    if ptr == 0:
        # ABI.md: hx_alloc returns 0 when the atom cannot get the memory.
        raise WasmFault(
            f"hx_alloc({length}) returned 0 (no memory)",
            interrupted=False,
            cause=MemoryError(f"hx_alloc({length}) failed"),
        )
    size = inst.memory_size if ptr + length > inst._size else inst._size
    if ptr < 0 or ptr + length > size:
        raise WasmFault(
            f"hx_alloc({length}) returned a bad pointer {ptr & 0xFFFFFFFF:#x}: the buffer "
            f"would end at byte {(ptr & 0xFFFFFFFF) + length}, outside the atom's memory "
            f"of {size} bytes",
            interrupted=False,
            cause=BadAllocError(ptr, length, size),
        )


def _trap_fault(export: str, trap: wasmtime.Trap) -> WasmFault:
    """The WasmFault of a trap the atom's own code raised."""
    interrupted = trap.trap_code == wasmtime.TrapCode.INTERRUPT
    # wasmtime puts a backtrace first and the reason ("wasm trap: ...") last.
    lines = [line.strip() for line in trap.message.splitlines() if line.strip()]
    message = lines[-1] if lines else "trap"
    return WasmFault(f"{export}: {message}", interrupted=interrupted, cause=None)
