"""Hostile and malformed modules through Runtime.load / create, and hostile atoms at run time.

Every bad module must be refused with one line that names the module (its hash
prefix) and what is wrong with it, and the runtime must go on loading and
running good atoms afterwards (docs/DESIGN.md §3 "Guards").
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Iterator

import pytest
import wasmtime

from hermesx.core import codec
from hermesx.core.errors import (
    AtomError,
    AtomTrapError,
    BadModuleError,
    DeadlineExceededError,
    HermesError,
    MemoryLimitError,
    MethodError,
    PayloadTooLargeError,
)
from hermesx.runtime.atom import Atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost

COUNTER = pathlib.Path(__file__).parents[2] / "atoms" / "build" / "counter.wasm"
GUID = "local:" + "c" * 32
MEMORY_CAP = 8 * 2**20

# A smallest atom that satisfies ABI v1; the pieces are swapped out one at a time.
_PARTS = {
    "memory": '(memory (export "memory") 1)',
    "hx_abi_version": '(func (export "hx_abi_version") (result i32) (i32.const 1))',
    "hx_alloc": '(func (export "hx_alloc") (param i32) (result i32) (i32.const 1024))',
    "hx_invoke": '(func (export "hx_invoke") (param i32 i32 i32 i32) (result i32) (i32.const 0))',
}


def module(*, imports: str = "", extra: str = "", **replace: str) -> bytes:
    """WAT atom built from _PARTS; ``replace`` swaps (or, with "", drops) a part."""
    parts = {**_PARTS, **replace}
    text = f"(module {imports} {' '.join(parts.values())} {extra})"
    return bytes(wasmtime.wat2wasm(text))


def label(wasm: bytes) -> str:
    return f"module {hashlib.sha256(wasm).hexdigest()[:12]}"


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    rt = Runtime(deadline_ms=300, memory_limit_bytes=MEMORY_CAP, max_payload_bytes=4096)
    yield rt
    rt.close()


def assert_still_serves(runtime: Runtime) -> None:
    """The runtime that refused something still loads and runs a good atom."""
    atom = runtime.create(runtime.load(COUNTER.read_bytes()), GUID, StandaloneHost())
    try:
        assert codec.unpack(atom.invoke("incr", codec.pack(4))) == 4
    finally:
        atom.close()


def refused(runtime: Runtime, wasm: bytes, kind: type[HermesError], needle: str) -> str:
    with pytest.raises(kind) as info:
        runtime.load(wasm)
    message = str(info.value)
    assert "\n" not in message, f"error is not one line: {message!r}"
    assert label(wasm) in message, f"error does not name the module: {message!r}"
    assert needle in message, message
    assert_still_serves(runtime)
    return message


# -- malformed binaries ----------------------------------------------------------


def test_zero_byte_module_is_refused_by_name(runtime: Runtime) -> None:
    refused(runtime, b"", BadModuleError, "bad magic")


@pytest.mark.parametrize(
    "wasm",
    [b"\x7fELF\x02\x01\x01\x00" + bytes(56), b"\x00asn\x01\x00\x00\x00", b"hello world", b"\x00"],
    ids=["elf", "near-magic", "text", "one-byte"],
)
def test_bad_magic_is_refused(runtime: Runtime, wasm: bytes) -> None:
    refused(runtime, wasm, BadModuleError, "")


def test_wrong_binary_version_is_refused(runtime: Runtime) -> None:
    refused(runtime, b"\x00asm\x02\x00\x00\x00", BadModuleError, "")


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5, 0.75, 0.99])
def test_truncated_module_is_refused(runtime: Runtime, fraction: float) -> None:
    whole = COUNTER.read_bytes()
    cut = whole[: max(9, int(len(whole) * fraction))]
    refused(runtime, cut, BadModuleError, "")


def test_tens_of_megabytes_of_junk_are_refused_quickly_and_clearly(runtime: Runtime) -> None:
    junk = b"\x00asm\x01\x00\x00\x00" + b"\xff" * (48 * 2**20)
    refused(runtime, junk, BadModuleError, "")


# -- modules that are WebAssembly but not atoms ----------------------------------


@pytest.mark.parametrize("missing", sorted(_PARTS))
def test_each_missing_export_is_named(runtime: Runtime, missing: str) -> None:
    # Without an exported memory the module still needs one for the data it uses.
    replacement = "(memory 1)" if missing == "memory" else ""
    refused(runtime, module(**{missing: replacement}), BadModuleError, missing)


@pytest.mark.parametrize(
    ("imports", "needle"),
    [
        ('(import "env" "f" (func))', "env.f"),
        ('(import "wasi_snapshot_preview1" "fd_write" (func (param i32)))', "fd_write"),
        ('(import "" "" (func))', "."),
        ('(import "hx" "exec" (func))', "hx.exec"),
        ('(import "hx" "reply" (global i32))', "hx.reply"),
        ('(import "env" "table" (table 1 funcref))', "env.table"),
    ],
    ids=["env", "wasi", "empty-names", "unknown-syscall", "syscall-as-global", "table-import"],
)
def test_imports_outside_the_abi_are_refused(runtime: Runtime, imports: str, needle: str) -> None:
    refused(runtime, module(imports=imports), BadModuleError, needle)


def test_initial_memory_above_the_cap_is_a_memory_error(runtime: Runtime) -> None:
    pages = MEMORY_CAP // 65536 + 1
    wasm = module(memory=f'(memory (export "memory") {pages})')
    message = refused(runtime, wasm, MemoryLimitError, str(MEMORY_CAP))
    assert "cap" in message


def test_data_larger_than_the_cap_is_a_memory_error(runtime: Runtime) -> None:
    pages = 2 * MEMORY_CAP // 65536
    data = "a" * (MEMORY_CAP + 1)
    wasm = module(
        memory=f'(memory (export "memory") {pages})', extra=f'(data (i32.const 0) "{data}")'
    )
    refused(runtime, wasm, MemoryLimitError, str(MEMORY_CAP))


def test_huge_table_is_refused_instead_of_allocated(runtime: Runtime) -> None:
    # Tables are outside the memory cap: 100 M entries would cost the node ~1 GiB.
    refused(runtime, module(extra="(table 100000000 funcref)"), BadModuleError, "table")


def test_data_segment_outside_memory_is_refused(runtime: Runtime) -> None:
    wasm = module(extra='(data (i32.const 70000) "abc")')
    refused(runtime, wasm, BadModuleError, "out of bounds")


# -- start functions and the version probe run under the deadline ----------------


def test_start_function_that_loops_forever_is_stopped(runtime: Runtime) -> None:
    wasm = module(extra="(func $s (loop $l (br $l))) (start $s)")
    refused(runtime, wasm, BadModuleError, "deadline")


def test_start_function_that_recurses_gives_one_line(runtime: Runtime) -> None:
    wasm = module(extra="(func $s (call $s)) (start $s)")
    refused(runtime, wasm, BadModuleError, "stack")


def test_start_function_that_traps_gives_one_line(runtime: Runtime) -> None:
    wasm = module(extra="(func $s (unreachable)) (start $s)")
    refused(runtime, wasm, BadModuleError, "unreachable")


def test_abi_version_probe_that_loops_is_stopped(runtime: Runtime) -> None:
    looping = '(func (export "hx_abi_version") (result i32) (loop $l (br $l)) (i32.const 1))'
    refused(runtime, module(hx_abi_version=looping), BadModuleError, "hx_abi_version")


def test_abi_version_probe_that_calls_a_syscall_is_refused(runtime: Runtime) -> None:
    probing = (
        '(func (export "hx_abi_version") (result i32)'
        " (call $reply (i32.const 0) (i32.const 1)) (i32.const 1))"
    )
    wasm = module(
        imports='(import "hx" "reply" (func $reply (param i32 i32)))', hx_abi_version=probing
    )
    refused(runtime, wasm, BadModuleError, "reply")


# -- hostile atoms at run time: each call fails alone, the atom keeps serving ----

_GOOD_METHOD = """
  (import "hx" "reply" (func $reply (param i32 i32)))
  (data (i32.const 0) "\\2a")
"""


def hostile_atom(runtime: Runtime, *, hx_alloc: str = "", hx_invoke: str = "") -> Atom:
    """An atom whose hx_invoke answers 42 (msgpack) unless the method starts with 'x'."""
    invoke = hx_invoke or (
        '(func (export "hx_invoke") (param $m i32) (param $ml i32) (param i32 i32) (result i32)'
        " (call $reply (i32.const 0) (i32.const 1)) (i32.const 0))"
    )
    parts = {"hx_invoke": invoke}
    if hx_alloc:
        parts["hx_alloc"] = hx_alloc
    wasm = module(imports=_GOOD_METHOD, **parts)
    return runtime.create(runtime.load(wasm), GUID, StandaloneHost())


def test_hx_alloc_returning_a_pointer_outside_memory_fails_the_call_only(
    runtime: Runtime,
) -> None:
    atom = hostile_atom(
        runtime,
        hx_alloc='(func (export "hx_alloc") (param i32) (result i32) (i32.const -16))',
    )
    with pytest.raises(AtomError) as info:
        atom.invoke("get", codec.pack(None))
    assert GUID in str(info.value) and "\n" not in str(info.value)
    assert_still_serves(runtime)


def test_hx_alloc_that_traps_fails_the_call_and_the_next_call_too_but_clearly(
    runtime: Runtime,
) -> None:
    atom = hostile_atom(
        runtime, hx_alloc='(func (export "hx_alloc") (param i32) (result i32) (unreachable))'
    )
    for _ in range(2):
        with pytest.raises(AtomTrapError, match=GUID):
            atom.invoke("get", codec.pack(None))
    assert_still_serves(runtime)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("(call $reply (i32.const -1) (i32.const 8))", AtomError),
        ("(call $reply (i32.const 0) (i32.const -1))", AtomError),
        ("(call $reply (i32.const 65530) (i32.const 100))", AtomError),
        (
            "(if (i32.ne (memory.grow (i32.const 100000)) (i32.const -1)) (then unreachable))",
            None,
        ),
        ("(loop $l (br $l))", DeadlineExceededError),
        ("(call $reply (i32.const 0) (i32.const 5000))", PayloadTooLargeError),
    ],
    ids=["negative-ptr", "negative-len", "past-end", "grow-refused", "loop", "reply-too-large"],
)
def test_hostile_hx_invoke_bodies_fail_alone(
    runtime: Runtime, body: str, kind: type[HermesError] | None
) -> None:
    invoke = (
        '(func (export "hx_invoke") (param $m i32) (param $ml i32) (param i32 i32) (result i32)'
        " (if (i32.eq (i32.load8_u (local.get $m)) (i32.const 120))"
        f" (then {body} (return (i32.const 0))))"
        " (call $reply (i32.const 0) (i32.const 1)) (i32.const 0))"
    )
    atom = hostile_atom(runtime, hx_invoke=invoke)
    if kind is None:
        # memory.grow past the cap returns -1 to the atom (else it traps), which carries on.
        assert atom.invoke("x", codec.pack(None)) == codec.pack(None)
    else:
        with pytest.raises(kind) as info:
            atom.invoke("x", codec.pack(None))
        assert GUID in str(info.value) and "\n" not in str(info.value)
    # The same atom answers its next call.
    assert codec.unpack(atom.invoke("get", codec.pack(None))) == 42


def test_method_names_that_are_not_text_reach_the_atom_as_bytes(runtime: Runtime) -> None:
    atom = runtime.create(runtime.load(COUNTER.read_bytes()), GUID, StandaloneHost())
    for method in ["", "\x00", "incr\x00", "é" * 300, "m" * 100_000]:
        with pytest.raises((MethodError, PayloadTooLargeError)) as info:
            atom.invoke(method, codec.pack(1))
        assert GUID in str(info.value)
    assert codec.unpack(atom.invoke("incr", codec.pack(1))) == 1
