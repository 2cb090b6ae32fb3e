"""Resources accounted per atom (issue 11, items 5 and 10): the KV and the reply table
count toward the memory cap, log output and module load cost are bounded, the
address space of an atom is sized to its cap, and a full node says `capacity`."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator

import pytest
import wasmtime
from wat.runtime_helpers import GUID_A, GUID_B, example

from hermesx.core import codec
from hermesx.core.errors import AtomTrapError, BadModuleError, CapacityError, MemoryLimitError
from hermesx.runtime.atom import Atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost
from hermesx.runtime.memory import KV_ENTRY_OVERHEAD
from hermesx.runtime.rewrite import MAX_MODULE_BYTES
from hermesx.runtime.syscalls import MAX_LOG_BYTES_PER_CALL

CAP = 16 * 2**20
MIB = 2**20


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(deadline_ms=5000, memory_limit_bytes=CAP)
    yield rt
    rt.close()


@pytest.fixture
def hog(runtime: Runtime) -> Atom:
    return runtime.create(runtime.load(example("memhog")), GUID_A, StandaloneHost())


def call(atom: Atom, method: str, *args: object) -> object:
    return codec.unpack(atom.invoke(method, codec.pack(list(args))))


def usage(atom: Atom) -> int:
    return atom._inst.memory_size + atom._host_bytes()


def test_a_1_gib_kv_flood_stops_at_the_memory_cap_and_the_atom_keeps_working(
    runtime: Runtime, hog: Atom
) -> None:
    # 1,024 values of 1 MiB in one call: the KV used to grow past any cap.
    with pytest.raises(
        MemoryLimitError, match=r"kv_fill hit the memory cap of 16777216 bytes"
    ) as e:
        call(hog, "kv_fill", 1024, 1024)
    assert "kv_put" in str(e.value) and "KV" in str(e.value)
    stored = call(hog, "kv_count")
    assert isinstance(stored, int) and 8 <= stored < 16
    assert usage(hog) <= CAP
    assert hog._kv_bytes == sum(len(k) + len(v) + KV_ENTRY_OVERHEAD for k, v in hog.kv.items())
    # Every stored value is whole: the refused put left nothing behind.
    assert all(len(v) == MIB for v in hog.kv.values())

    # Deleting makes room again.
    assert call(hog, "kv_drop", 2) == 2
    assert call(hog, "kv_fill", 2, 1024) == 2
    assert call(hog, "kv_count") == stored

    # The KV moves with the atom, and counts in the runtime that restores it.
    other = Runtime(memory_limit_bytes=CAP)
    try:
        copy = other.restore(
            other.load(example("memhog")), GUID_A, StandaloneHost(), hog.snapshot()
        )
        assert copy.kv == hog.kv
        assert copy._kv_bytes == hog._kv_bytes
        with pytest.raises(MemoryLimitError, match="memory cap"):
            call(copy, "kv_fill", 64, 1024)
    finally:
        other.close()


def test_linear_memory_grows_only_into_what_the_kv_leaves(hog: Atom) -> None:
    assert call(hog, "kv_fill", 12, 1024) == 12
    with pytest.raises(Exception, match="out of memory"):
        call(hog, "grow", 256)  # 16 MiB of pages: only ~4 MiB are left
    assert usage(hog) <= CAP
    assert call(hog, "kv_drop", 12) == 12
    # The room the KV gave back is usable by linear memory again.
    pages = call(hog, "pages")
    assert isinstance(pages, int)
    assert call(hog, "grow", 100) == pages + 100


def test_the_reply_table_counts_toward_the_cap(runtime: Runtime) -> None:
    echo = runtime.create(runtime.load(example("echo")), GUID_B, StandaloneHost())
    before = echo._host_bytes()
    payload = codec.pack(["x" * 100_000])
    for i in range(20):
        echo.invoke("echo", payload, request_id=f"r{i}")
    assert echo._host_bytes() - before >= 20 * 100_000


def test_a_log_flood_is_bounded_per_call(hog: Atom, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hermesx.runtime.atom")
    # 32 lines of 4 MiB in one call (the flood).
    started = time.monotonic()
    assert call(hog, "log_flood", 32, 4096) == 32
    assert time.monotonic() - started < 5
    lines = [r.getMessage() for r in caplog.records if r.name == "hermesx.runtime.atom"]
    markers = [line for line in lines if "the rest of its log output is dropped" in line]
    assert len(markers) == 1 and "log_flood" in markers[0]
    atom_lines = [line for line in lines if line not in markers]
    assert sum(len(line) for line in atom_lines) <= MAX_LOG_BYTES_PER_CALL + 1024
    assert all(len(line) < 4096 + 200 for line in atom_lines)
    assert all("more bytes cut" in line for line in atom_lines)
    # The bound is per call: the next call logs again.
    caplog.clear()
    assert call(hog, "log_flood", 2, 1) == 2
    again = [r.getMessage() for r in caplog.records if r.name == "hermesx.runtime.atom"]
    assert len(again) == 2
    assert all(line.endswith("abcdefghijklmnopqrstuvwxyzabcdefghij") for line in again), again


def _globals_module(count: int) -> bytes:
    """A valid atom module with ``count`` mutable globals, assembled directly (fast)."""

    def uleb(n: int) -> bytes:
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def section(sec_id: int, body: bytes) -> bytes:
        return bytes([sec_id]) + uleb(len(body)) + body

    base = wasmtime.wat2wasm(
        """(module (memory (export "memory") 1)
          (func (export "hx_abi_version") (result i32) i32.const 1)
          (func (export "hx_alloc") (param i32) (result i32) i32.const 1024)
          (func (export "hx_invoke") (param i32 i32 i32 i32) (result i32) i32.const 0))"""
    )
    one = bytes([0x7F, 0x01, 0x41, 0x00, 0x0B])  # (mut i32) (i32.const 0)
    globals_section = section(6, uleb(count) + one * count)
    # Insert the global section before the export section (id 7).
    pos = 8
    while base[pos] != 7:
        size, n = 0, 0
        while True:
            b = base[pos + 1 + n]
            size |= (b & 0x7F) << (7 * n)
            n += 1
            if not b & 0x80:
                break
        pos += 1 + n + size
    return base[:pos] + globals_section + base[pos:]


def test_a_100000_global_module_is_refused_quickly_with_the_limit_named(runtime: Runtime) -> None:
    wasm = _globals_module(100_000)
    started = time.monotonic()
    with pytest.raises(BadModuleError, match=r"100000 globals, over the limit of 1000 globals"):
        runtime.load(wasm)
    assert time.monotonic() - started < 1.0
    # Under the limit it loads.
    assert runtime.load(_globals_module(500)).mutable_globals


@pytest.mark.parametrize(
    ("extra", "what"),
    [
        ("(memory $m2 1)", "2 memories, over the limit of 1 memories"),
        (
            " ".join(f'(func (export "f{i}"))' for i in range(1001)),
            "exports, over the limit of 1000 exports",
        ),
    ],
)
def test_other_module_limits_are_named(runtime: Runtime, extra: str, what: str) -> None:
    wasm = wasmtime.wat2wasm(
        f"""(module (memory (export "memory") 1) {extra}
          (func (export "hx_abi_version") (result i32) i32.const 1)
          (func (export "hx_alloc") (param i32) (result i32) i32.const 1024)
          (func (export "hx_invoke") (param i32 i32 i32 i32) (result i32) i32.const 0))"""
    )
    with pytest.raises(BadModuleError, match=what):
        runtime.load(wasm)


def test_an_oversized_module_is_refused_before_it_is_parsed(runtime: Runtime) -> None:
    with pytest.raises(BadModuleError, match=f"over the limit of {MAX_MODULE_BYTES} bytes"):
        runtime.load(b"\0asm\1\0\0\0" + bytes(MAX_MODULE_BYTES))


BAD_ALLOC = """
(module
  (memory (export "memory") 1)
  (func (export "hx_abi_version") (result i32) i32.const 1)
  (func (export "hx_alloc") (param i32) (result i32) i32.const 0x7fff0000)
  (func (export "hx_invoke") (param i32 i32 i32 i32) (result i32) i32.const 0))
"""


def test_an_out_of_range_hx_alloc_is_reported_as_a_bad_pointer(runtime: Runtime) -> None:
    atom = runtime.create(runtime.load(wasmtime.wat2wasm(BAD_ALLOC)), GUID_A, StandaloneHost())
    with pytest.raises(AtomTrapError) as e:
        atom.invoke("m", b"\xc0")
    text = str(e.value)
    assert "hx_alloc(2) returned a bad pointer 0x7fff0000" in text
    assert "outside the atom's memory of 65536 bytes" in text
    assert "memory cap" not in text.replace("not a memory-cap hit", "")


BAD_ALLOC_IN_SYSCALL = """
(module
  (import "hx" "kv_keys" (func $kv_keys (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $allocs (mut i32) (i32.const 0))
  (func (export "hx_abi_version") (result i32) i32.const 1)
  ;; The first buffer (the call's inputs) is fine, every later one out of range.
  (func (export "hx_alloc") (param i32) (result i32)
    (global.set $allocs (i32.add (global.get $allocs) (i32.const 1)))
    (select (i32.const 1024) (i32.const 0xfffff000) (i32.eq (global.get $allocs) (i32.const 1))))
  (func (export "hx_invoke") (param i32 i32 i32 i32) (result i32)
    (drop (call $kv_keys (i32.const 0) (i32.const 0) (i32.const 2048)))
    i32.const 0))
"""


def test_a_bad_hx_alloc_pointer_inside_a_syscall_is_reported_as_such(runtime: Runtime) -> None:
    module = runtime.load(wasmtime.wat2wasm(BAD_ALLOC_IN_SYSCALL))
    atom = runtime.create(module, GUID_A, StandaloneHost())
    with pytest.raises(
        AtomTrapError, match=r"hx_alloc\(1\) returned a bad pointer 0xfffff000"
    ) as e:
        atom.invoke("m", b"\xc0")
    assert "a bug in the atom, not a memory-cap hit" in str(e.value)


def test_a_full_node_refuses_a_new_atom_with_a_capacity_error() -> None:
    rt = Runtime(node_name="small", max_atoms=3)
    try:
        module = rt.load(example("counter"))
        atoms = [rt.create(module, f"local:{i:032x}", StandaloneHost()) for i in range(3)]
        with pytest.raises(CapacityError, match=r"node small is full: it holds 3 atoms") as e:
            rt.create(module, f"local:{9:032x}", StandaloneHost())
        assert e.value.kind == "capacity"
        with pytest.raises(CapacityError):
            rt.restore(module, atoms[0].guid, StandaloneHost(), atoms[0].snapshot())
        # A closed atom frees its place once its memory is released.
        atoms.pop().close()
        gc.collect()
        assert rt.create(module, f"local:{9:032x}", StandaloneHost()).invoke("get", b"\xc0")
    finally:
        rt.close()


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * 4096


def test_an_atom_reserves_address_space_near_its_cap_not_4_gib() -> None:
    rt = Runtime(memory_limit_bytes=64 * MIB)
    try:
        module = rt.load(example("counter"))
        before = _address_space()
        atoms = [rt.create(module, f"local:{i:032x}", StandaloneHost()) for i in range(50)]
        per_atom = (_address_space() - before) / len(atoms)
        assert per_atom < 80 * MIB  # the cap, a guard page run and a little bookkeeping
        # The default capacity follows from the process's mapping budget, far above
        # the ~16,000 atoms of 4 GiB reservations.
        assert rt.max_atoms > 16_000 or "vm.max_map_count" in rt.capacity_reason
    finally:
        rt.close()
