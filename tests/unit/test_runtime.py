"""Atom runtime: loading and validation, invocation, guards, queueing, dedup."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator

import pytest
import wasmtime
from wat.runtime_helpers import GUID_A, example, wat

from hermesx.core import codec
from hermesx.core.errors import (
    AtomTrapError,
    BadModuleError,
    CallCycleError,
    DeadlineExceededError,
    MemoryLimitError,
    MethodError,
    PayloadTooLargeError,
    UnreachableError,
)
from hermesx.runtime.atom import Atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost
from hermesx.runtime.run import run_once
from hermesx.testing.wait import wait_until

MINIMAL = """
(module
  {imports}
  (memory (export "memory") 1)
  (func (export "hx_abi_version") (result i32) (i32.const {version}))
  (func (export "hx_alloc") (param i32) (result i32) (i32.const 1024))
  {invoke}
  {extra})
"""
INVOKE = '(func (export "hx_invoke") (param i32 i32 i32 i32) (result i32) (i32.const 0))'


def minimal(imports: str = "", version: int = 1, invoke: str = INVOKE, extra: str = "") -> bytes:
    return wasmtime.wat2wasm(
        MINIMAL.format(imports=imports, version=version, invoke=invoke, extra=extra)
    )


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(deadline_ms=300, memory_limit_bytes=8 * 2**20, max_payload_bytes=2000)
    yield rt
    rt.close()


@pytest.fixture
def atom(runtime: Runtime) -> Atom:
    return runtime.create(runtime.load(wat("testatom")), GUID_A, StandaloneHost())


def call(atom: Atom, method: str, arg: object = None, **kw: object) -> object:
    return codec.unpack(atom.invoke(method, codec.pack(arg), **kw))  # type: ignore[arg-type]


# -- loading ------------------------------------------------------------------


def test_load_is_cached_by_content_hash(runtime: Runtime) -> None:
    wasm = wat("testatom")
    first = runtime.load(wasm)
    assert runtime.load(wasm) is first
    import hashlib

    assert first.hash == hashlib.sha256(wasm).hexdigest()
    assert first.wasm == wasm


def test_compiled_module_cache_on_disk_survives_a_new_runtime(tmp_path: pathlib.Path) -> None:
    wasm = wat("testatom")
    rt1 = Runtime(cache_dir=tmp_path)
    try:
        rt1.load(wasm)
    finally:
        rt1.close()
    assert list(tmp_path.glob("*.cwasm"))
    rt2 = Runtime(cache_dir=tmp_path)
    try:
        atom = rt2.create(rt2.load(wasm), GUID_A, StandaloneHost())
        assert codec.unpack(atom.invoke("incr", codec.pack(2))) == 2
    finally:
        rt2.close()


@pytest.mark.parametrize(
    ("wasm", "needle"),
    [
        (b"not wasm at all", "bad magic"),
        (b"\x00asm\x01\x00\x00\x00\x01\xff", "truncated"),
        (minimal(invoke=""), "hx_invoke"),
        (minimal(version=2), "ABI version 2"),
        (
            minimal(imports='(import "wasi_snapshot_preview1" "fd_write" (func (param i32)))'),
            "wasi_snapshot_preview1.fd_write",
        ),
        (minimal(imports='(import "hx" "open_file" (func))'), "hx.open_file"),
        (minimal(imports='(import "hx" "reply" (func (param i64)))'), "hx.reply"),
        (
            minimal(invoke='(func (export "hx_invoke") (param i32) (result i32) (i32.const 0))'),
            "hx_invoke with the wrong type",
        ),
    ],
)
def test_bad_modules_are_refused_with_a_clear_error(
    runtime: Runtime, wasm: bytes, needle: str
) -> None:
    with pytest.raises(BadModuleError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        runtime.load(wasm)


def test_module_without_memory_or_alloc_is_named(runtime: Runtime) -> None:
    no_alloc = wasmtime.wat2wasm(
        '(module (memory (export "memory") 1)'
        ' (func (export "hx_abi_version") (result i32) (i32.const 1))'
        f" {INVOKE})"
    )
    with pytest.raises(BadModuleError, match="hx_alloc"):
        runtime.load(no_alloc)
    no_memory = wasmtime.wat2wasm(
        '(module (func (export "hx_abi_version") (result i32) (i32.const 1))'
        ' (func (export "hx_alloc") (param i32) (result i32) (i32.const 0))'
        f" {INVOKE})"
    )
    with pytest.raises(BadModuleError, match="memory"):
        runtime.load(no_memory)


def test_looping_start_function_is_stopped_by_the_deadline(runtime: Runtime) -> None:
    looping = minimal(extra="(func $s (loop $l (br $l))) (start $s)")
    with pytest.raises(BadModuleError, match="deadline"):
        runtime.load(looping)


def test_example_without_hx_invoke_is_refused(runtime: Runtime) -> None:
    with pytest.raises(BadModuleError, match="hx_invoke"):
        runtime.load(example("noexport"))


# -- invocation ---------------------------------------------------------------


def test_init_args_and_calls(runtime: Runtime) -> None:
    atom = runtime.create(runtime.load(wat("testatom")), GUID_A, StandaloneHost(), codec.pack(41))
    assert call(atom, "get") == 41
    assert call(atom, "incr", 2) == 43
    assert call(atom, "echo", {"a": [1, "x"]}) == {"a": [1, "x"]}
    assert call(atom, "guid") == GUID_A


def test_method_error_carries_the_atoms_message(atom: Atom) -> None:
    with pytest.raises(MethodError, match="boom") as info:
        atom.invoke("no_such_method", b"")
    assert GUID_A in str(info.value)


def test_counter_example_atom(runtime: Runtime) -> None:
    atom = runtime.create(runtime.load(example("counter")), GUID_A, StandaloneHost(), codec.pack(5))
    assert call(atom, "incr", 1) == 6
    assert call(atom, "get") == 6


def test_trap_fails_only_that_call(atom: Atom) -> None:
    call(atom, "incr", 3)
    with pytest.raises(AtomTrapError, match="unreachable"):
        atom.invoke("trap", b"")
    assert call(atom, "incr", 1) == 4


def test_infinite_loop_hits_the_deadline_and_the_atom_stays_usable(atom: Atom) -> None:
    with pytest.raises(DeadlineExceededError, match="300 ms"):
        atom.invoke("spin", b"")
    assert call(atom, "incr", 1) == 1


def test_memory_hog_hits_the_cap_and_the_atom_stays_usable(atom: Atom) -> None:
    with pytest.raises(MemoryLimitError, match="memory cap"):
        atom.invoke("hog", b"")
    assert call(atom, "incr", 1) == 1


def test_example_misbehaving_atoms_keep_working_after_their_failure(runtime: Runtime) -> None:
    trap = runtime.create(runtime.load(example("trap")), GUID_A, StandaloneHost())
    for _ in range(3):
        with pytest.raises(AtomTrapError):
            trap.invoke("boom", b"")
    assert call(trap, "ok") == 1
    spin = runtime.create(runtime.load(example("spin")), GUID_A, StandaloneHost())
    with pytest.raises(DeadlineExceededError):
        spin.invoke("spin", b"")
    assert call(spin, "ok") == 1
    hog = runtime.create(runtime.load(example("memhog")), GUID_A, StandaloneHost())
    with pytest.raises(MemoryLimitError):
        hog.invoke("grow_trap", codec.pack(1000))
    with pytest.raises(MethodError, match="out of memory"):
        hog.invoke("grow", codec.pack(1000))
    assert isinstance(call(hog, "pages"), int)


def test_traps_do_not_leak_the_shadow_stack(atom: Atom) -> None:
    start = call(atom, "sp")
    for _ in range(20):
        with pytest.raises(AtomTrapError):
            atom.invoke("deeptrap", b"")
    assert call(atom, "sp") == start


def test_memory_cap_refuses_a_module_that_needs_more(runtime: Runtime) -> None:
    big = wasmtime.wat2wasm(
        '(module (memory (export "memory") 256)'
        ' (func (export "hx_abi_version") (result i32) (i32.const 1))'
        ' (func (export "hx_alloc") (param i32) (result i32) (i32.const 1024))'
        f" {INVOKE})"
    )
    with pytest.raises(MemoryLimitError):
        runtime.load(big)


def test_payload_limits(atom: Atom) -> None:
    with pytest.raises(PayloadTooLargeError, match="2000-byte"):
        atom.invoke("echo", codec.pack(b"x" * 3000))
    with pytest.raises(PayloadTooLargeError, match="result of big"):
        atom.invoke("big", b"")
    assert call(atom, "echo", "ok") == "ok"


def test_call_cycle_into_a_non_reentrant_atom_fails_at_once(atom: Atom) -> None:
    with pytest.raises(CallCycleError, match=GUID_A):
        atom.invoke("get", b"", chain=("local:" + "c" * 32, GUID_A))


def test_request_id_dedup_returns_the_first_outcome(atom: Atom) -> None:
    assert call(atom, "incr", 1, request_id="r1") == 1
    assert call(atom, "incr", 1, request_id="r1") == 1
    assert call(atom, "get") == 1
    with pytest.raises(MethodError, match="boom"):
        atom.invoke("fail", b"", request_id="r2")
    with pytest.raises(MethodError, match="boom"):
        atom.invoke("fail", b"", request_id="r2")
    assert atom.generation == 3


def test_reply_table_is_bounded() -> None:
    rt = Runtime(reply_table_size=2)
    try:
        atom = rt.create(rt.load(wat("testatom")), GUID_A, StandaloneHost())
        for rid in ("a", "b", "c"):
            atom.invoke("incr", codec.pack(1), request_id=rid)
        # "a" fell out of the table: running it again increments again.
        assert codec.unpack(atom.invoke("incr", codec.pack(1), request_id="a")) == 4
        assert codec.unpack(atom.invoke("incr", codec.pack(1), request_id="c")) == 3
    finally:
        rt.close()


def test_concurrent_invocations_run_one_at_a_time_in_fifo_order(atom: Atom) -> None:
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        results[i] = call(atom, "slow", 20)

    threads = []
    for i in range(6):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        threads.append(t)
        # Start the next caller only once this one is running, queued or done.
        wait_until(
            lambda i=i: len(results) + len(atom._waiters) + atom.busy > i,
            5.0,
            f"caller {i} to run or queue",
            every=0.001,
        )
    for t in threads:
        t.join(timeout=30)
    assert results == {i: i + 1 for i in range(6)}


def test_closed_atom_refuses_calls(atom: Atom) -> None:
    atom.close()
    with pytest.raises(UnreachableError, match="closed"):
        atom.invoke("get", b"")


def test_log_reaches_python_logging(atom: Atom, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="hermesx.runtime.atom"):
        atom.invoke("log", b"")
    assert any("hello" in r.getMessage() and GUID_A in r.getMessage() for r in caplog.records)


def test_run_once(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "t.wasm"
    path.write_bytes(wat("testatom"))
    assert codec.unpack(run_once(path, "incr", codec.pack(2), codec.pack(40))) == 42


def test_run_once_names_a_missing_file(tmp_path: pathlib.Path) -> None:
    from hermesx.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"missing\.wasm"):
        run_once(tmp_path / "missing.wasm", "get", b"")
