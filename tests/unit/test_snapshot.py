"""Snapshots: exact restore in a fresh engine, KV, reply table, pending interrupts."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from wat.runtime_helpers import GUID_A, GUID_B, example, wat

from hermesx.core import codec
from hermesx.core.errors import StorageError
from hermesx.core.snapshot import (
    AtomState,
    ReplyRecord,
    decode_state,
    encode_state,
    memory_segments,
    snapshot_checksum,
    verify_checksum,
)
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost
from hermesx.runtime.mailbox import Interrupt
from hermesx.testing.wait import wait_until


@pytest.fixture
def runtimes() -> Iterator[tuple[Runtime, Runtime]]:
    first, second = Runtime(), Runtime()
    yield first, second
    first.close()
    second.close()


def test_counter_continues_exactly_after_restore_in_a_fresh_engine(
    runtimes: tuple[Runtime, Runtime],
) -> None:
    rt1, rt2 = runtimes
    for module_bytes in (example("counter"), wat("testatom")):
        atom = rt1.create(rt1.load(module_bytes), GUID_A, StandaloneHost())
        one = codec.pack(1)
        for _ in range(1000):
            atom.invoke("incr", one)
        snap = atom.snapshot()
        restored = rt2.restore(rt2.load(module_bytes), GUID_A, StandaloneHost(), snap)
        assert codec.unpack(restored.invoke("incr", one)) == 1001
        assert restored.generation == 1001
        # The original is untouched by its snapshot.
        assert codec.unpack(atom.invoke("get", b"")) == 1000


def test_kv_and_reply_table_survive_a_snapshot(runtimes: tuple[Runtime, Runtime]) -> None:
    rt1, rt2 = runtimes
    atom = rt1.create(rt1.load(wat("testatom")), GUID_A, StandaloneHost())
    atom.invoke("kvput", codec.pack({"saved": True}))
    assert codec.unpack(atom.invoke("incr", codec.pack(5), request_id="req-1")) == 5
    restored = rt2.restore(rt2.load(wat("testatom")), GUID_A, StandaloneHost(), atom.snapshot())
    assert codec.unpack(restored.invoke("kvget", b"")) == {"saved": True}
    # A retried request after the move returns the first reply, without running.
    assert codec.unpack(restored.invoke("incr", codec.pack(5), request_id="req-1")) == 5
    assert codec.unpack(restored.invoke("get", b"")) == 5


def test_kvstore_example_survives_a_snapshot(runtimes: tuple[Runtime, Runtime]) -> None:
    rt1, rt2 = runtimes
    wasm = example("kvstore")
    atom = rt1.create(rt1.load(wasm), GUID_A, StandaloneHost())
    atom.invoke("put", codec.pack(["colour", "blue"]))
    restored = rt2.restore(rt2.load(wasm), GUID_A, StandaloneHost(), atom.snapshot())
    assert codec.unpack(restored.invoke("get", codec.pack(["colour"]))) == "blue"


def test_large_memory_state_round_trips(runtimes: tuple[Runtime, Runtime]) -> None:
    rt1, rt2 = runtimes
    wasm = example("memhog")
    atom = rt1.create(rt1.load(wasm), GUID_A, StandaloneHost())
    assert codec.unpack(atom.invoke("fill", codec.pack(1024))) == 1024
    restored = rt2.restore(rt2.load(wasm), GUID_A, StandaloneHost(), atom.snapshot())
    assert codec.unpack(restored.invoke("check", b"")) == 1024


def test_undelivered_interrupts_travel_with_the_snapshot(runtimes: tuple[Runtime, Runtime]) -> None:
    rt1, rt2 = runtimes
    wasm = wat("testatom")
    atom = rt1.create(rt1.load(wasm), GUID_A, StandaloneHost())
    # Take the atom so the interrupt cannot be delivered before the snapshot.
    assert atom._enter(None, None, "test")
    atom._mail.append(Interrupt(4, b"queued"))
    state = atom._capture_state()
    atom._leave()
    restored = rt2.restore(rt2.load(wasm), GUID_A, StandaloneHost(), encode_state(state))
    wait_until(lambda: restored.kv.get(b"i") == b"queued", 5.0, "the restored interrupt to run")
    assert codec.unpack(restored.invoke("ints", b"")) == 1


def test_restore_refuses_a_snapshot_of_another_module_or_atom(
    runtimes: tuple[Runtime, Runtime],
) -> None:
    rt1, _ = runtimes
    atom = rt1.create(rt1.load(wat("testatom")), GUID_A, StandaloneHost())
    snap = atom.snapshot()
    with pytest.raises(StorageError, match="module"):
        rt1.restore(rt1.load(example("counter")), GUID_A, StandaloneHost(), snap)
    with pytest.raises(StorageError, match=GUID_A):
        rt1.restore(rt1.load(wat("testatom")), GUID_B, StandaloneHost(), snap)


def test_damaged_or_foreign_snapshots_are_storage_errors() -> None:
    with pytest.raises(StorageError, match="magic"):
        decode_state(b"garbage")
    good = encode_state(AtomState("h", GUID_A, 65536, (), ()))
    with pytest.raises(StorageError, match="format 9"):
        decode_state(good[:6] + b"\x09" + good[7:])
    with pytest.raises(StorageError, match="damaged"):
        decode_state(good[:-3])
    with pytest.raises(StorageError, match="damaged"):
        decode_state(good + b"\x00")  # bytes after its end
    with pytest.raises(StorageError, match="damaged: the snapshot's body is a dict"):
        decode_state(good[:8] + b"\x80")


def test_state_encoding_round_trips_with_and_without_zlib() -> None:
    memory = bytes(65536) + b"\x01" * 65536 + bytes(65536) + b"\x02" * 10
    state = AtomState(
        module_hash="abc",
        guid=GUID_A,
        memory_size=len(memory),
        memory=memory_segments(memory),
        globals=(("__stack_pointer", "i32", 65536), ("f", "f64", 1.5)),
        kv={b"k": b"v"},
        replies=(ReplyRecord("r", "", b"\x01"), ReplyRecord("s", "method", b"boom")),
        interrupts=((3, b"x"),),
        futures=((2, 0, b"\xc0"),),
        next_future_id=3,
        generation=7,
    )
    for compress in (False, True):
        assert decode_state(encode_state(state, compress=compress)) == state
    # Zero pages are not stored.
    assert [offset for offset, _ in state.memory] == [65536, 3 * 65536]
    rebuilt = bytearray(len(memory))
    for offset, data in state.memory:
        rebuilt[offset : offset + len(data)] = data
    assert bytes(rebuilt) == memory


def test_a_snapshot_and_its_generation_are_taken_together_while_calls_run(
    runtimes: tuple[Runtime, Runtime],
) -> None:
    rt1, rt2 = runtimes
    module = rt1.load(example("counter"))
    atom = rt1.create(module, GUID_A, StandaloneHost())
    one = codec.pack(1)
    stop = threading.Event()

    def calls() -> None:
        while not stop.is_set():
            atom.invoke("incr", one)

    callers = [threading.Thread(target=calls) for _ in range(3)]
    for t in callers:
        t.start()
    try:
        for _ in range(200):
            snap, generation = atom.snapshot_with_generation()
            # The generation is exactly the one the snapshot holds, never one
            # a call that ended meanwhile made.
            assert decode_state(snap).generation == generation
    finally:
        stop.set()
        for t in callers:
            t.join()
    restored = rt2.restore(rt2.load(example("counter")), GUID_A, StandaloneHost(), snap)
    assert restored.generation == generation
    assert codec.unpack(restored.invoke("get", b"")) == generation


def test_snapshot_checksum_catches_one_flipped_bit_and_names_what() -> None:
    data = bytes(range(256)) * 64
    checksum = snapshot_checksum(data)
    verify_checksum(data, checksum, "checkpoint x")
    damaged = bytearray(data)
    damaged[5000] ^= 0x01
    with pytest.raises(StorageError, match=r"^checkpoint x is damaged: its 16384 bytes have"):
        verify_checksum(bytes(damaged), checksum, "checkpoint x")
