"""The host functions an atom imports (module ``hx``, ABI v1; docs/DESIGN.md §3).

atoms/ABI.md is the contract; this module implements its wire-level half: each
host function decodes the pointers and lengths it gets, checks them against the
atom's memory, and hands the decoded request to :class:`Syscalls`, which the
runtime's Atom implements (the behaviour lives in hermesx.runtime.syscalls). A
pointer outside the memory gives status -1 instead of failing the call. The
functions are unchecked wasmtime host functions (about 0.8 µs a crossing).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import wasmtime
from wasmtime import _bindings as ffi

from hermesx.core.errors import BadModuleError
from hermesx.runtime.abi import (
    ABI_VERSION,
    IMPORTS,
    LOOKUP_MODES,
    MAX_LOG_LINE_BYTES,
    STATUS_ERROR,
    STATUS_INVALID,
    STATUS_OK,
)
from hermesx.runtime.instance import BadPointerError, WasmInstance

__all__ = ["Syscalls", "make_imports"]

_Callback = ffi.wasmtime_func_unchecked_callback_t
# (env, caller, args-and-results, their count) -> a wasm_trap_t* as int, 0 for none.
_RawCallback = Callable[[Any, Any, Any, int], int]
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NO_FINALIZER = _Finalizer(lambda _env: None)
_VALTYPE = {"i": wasmtime.ValType.i32, "I": wasmtime.ValType.i64}


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


@dataclass(frozen=True, slots=True)
class _HostFunc:
    func: wasmtime.Func
    callback: Any  # the ctypes callback object; kept alive with the store


def _func_type(sig: tuple[str, str]) -> wasmtime.FuncType:
    return wasmtime.FuncType([_VALTYPE[c]() for c in sig[0]], [_VALTYPE[c]() for c in sig[1]])


def _host_callback(inst: WasmInstance, body: Callable[[Any], None]) -> _RawCallback:
    """The wasmtime callback running ``body``: an exception becomes the call's trap."""

    def callback(_env: Any, _caller: Any, raw: Any, _n: int) -> int:
        try:
            body(raw)
            return 0
        except BaseException as exc:
            return inst.host_trap(exc)

    return callback


def _new_host_func(inst: WasmInstance, sig: tuple[str, str], callback: _RawCallback) -> _HostFunc:
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
    read = inst.read
    sys_reply = sys.sys_reply
    host_trap = inst.host_trap

    def reply(_env: Any, _caller: Any, raw: Any, _n: int) -> int:
        # On every call's path: its own callback, one Python frame fewer
        # than the others (see _host_callback).
        try:
            ptr, length = raw[0].i32, raw[1].i32
            if length > max_payload:
                sys.sys_reply_too_large(length)
            else:
                sys_reply(read(ptr, length))
            return 0
        except BaseException as exc:
            return host_trap(exc)

    def log(raw: Any) -> None:
        ptr, length = raw[1].i32, raw[2].i32
        inst.check(ptr, length)
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
        except BadPointerError:
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
            except BadPointerError as exc:
                sys.sys_log(2, f"invalid syscall argument: {exc}")
                raw[0].i32 = STATUS_INVALID

        return body

    def out_param(out: int) -> int:
        """An ABI "out" parameter, checked before the syscall acts."""
        inst.check(out, 8)
        return out

    def answer(out: int, result: tuple[int, bytes]) -> int:
        status, data = result
        inst.write_out(out, data)
        return status

    def read_args(ptr: int, length: int) -> bytes:
        if length > max_payload:
            raise BadPointerError(
                f"arguments of {length} bytes exceed the {max_payload}-byte limit"
            )
        return inst.read(ptr, length)

    def invoke(raw: Any) -> int:
        target = _text(inst, raw[0].i32, raw[1].i32)
        method = _text(inst, raw[2].i32, raw[3].i32)
        args = read_args(raw[4].i32, raw[5].i32)
        out = out_param(raw[6].i32)
        return answer(out, sys.sys_invoke(target, method, args))

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
        out = out_param(raw[2].i32)
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
        out = out_param(raw[2].i32)
        keys = sorted(k for k in sys.kv if k.startswith(prefix))
        inst.write_out(out, msgpack.packb(keys, use_bin_type=True))
        return len(keys)

    def lookup(raw: Any) -> int:
        mode = LOOKUP_MODES.get(raw[0].i32)
        if mode is None:
            return STATUS_INVALID
        scope = _text(inst, raw[1].i32, raw[2].i32) if raw[2].i32 else None
        pattern = _text(inst, raw[3].i32, raw[4].i32)
        out = out_param(raw[5].i32)
        return answer(out, sys.sys_lookup(mode, scope, pattern))

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
        callback: _RawCallback
        if name == "reply":
            callback = reply
        elif name in bodies:
            callback = _host_callback(inst, bodies[name])
        else:
            raise BadModuleError(f"module imports hx.{name}, which ABI v{ABI_VERSION} lacks")
        host = _new_host_func(inst, IMPORTS[name], callback)
        funcs.append(host.func)
        keep.append(host.callback)
    return funcs, keep
