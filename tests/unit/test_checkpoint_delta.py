"""Incremental checkpoints: finding what changed, the delta format, composing it (DESIGN §6)."""

from __future__ import annotations

import ctypes
import os
import random
from collections.abc import Iterator
from dataclasses import replace

import pytest
from wat.runtime_helpers import GUID_A, example

from hermesx.core import codec
from hermesx.core.delta import StateDelta, compose, compose_chain, decode_delta, encode_delta
from hermesx.core.errors import StorageError
from hermesx.core.identity import TAD
from hermesx.core.replies import ReplyTable, ReplyWindow
from hermesx.core.snapshot import (
    CHUNK,
    AtomState,
    ReplyRecord,
    decode_state,
    encode_state,
    memory_segments,
)
from hermesx.node.catalog import ActiveAtom
from hermesx.node.checkpoints import IDLE_BASE_S, Checkpointing
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.runtime.delta import ChangeTracker, changed_chunks
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime()
    yield rt
    rt.close()


def _address(buffer: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))


def _rest(**fields: object) -> AtomState:
    base = AtomState(module_hash="ab" * 32, guid=GUID_A, memory_size=0, memory=(), globals=())
    return replace(base, **fields)  # type: ignore[arg-type]


def _records(*ids: str) -> tuple[ReplyRecord, ...]:
    return tuple(ReplyRecord(i, "", i.encode()) for i in ids)


def _table(*ids: str, entries: int = 1024) -> ReplyTable:
    table = ReplyTable(ReplyWindow(entries))
    for record in _records(*ids):
        table.record(record)
    return table


def _memory(state: AtomState) -> bytearray:
    memory = bytearray(state.memory_size)
    for offset, data in state.memory:
        memory[offset : offset + len(data)] = data
    return memory


def _same_state(a: AtomState, b: AtomState) -> None:
    """Equal as states (memory by content, KV regardless of order)."""
    assert a.memory_size == b.memory_size
    assert _memory(a) == _memory(b)
    assert a.kv == b.kv
    assert [r.request_id for r in a.replies] == [r.request_id for r in b.replies]
    assert (a.globals, a.generation, a.next_future_id) == (
        b.globals,
        b.generation,
        b.next_future_id,
    )


def test_changed_chunks_finds_exactly_the_chunks_that_differ() -> None:
    memory = bytearray(os.urandom(64 * CHUNK + 3 * 64 * CHUNK))
    base = bytearray(memory)
    assert changed_chunks(_address(memory), len(memory), base) == []
    for offset in (0, 5 * CHUNK + 17, 64 * CHUNK, len(memory) - 1):
        memory[offset] ^= 0xFF
    assert changed_chunks(_address(memory), len(memory), base) == [
        0,
        5 * CHUNK,
        64 * CHUNK,
        len(memory) - CHUNK,
    ]


def test_changed_chunks_agrees_with_comparing_every_chunk() -> None:
    rng = random.Random(3)
    for _ in range(40):
        size = rng.choice((CHUNK, 3 * CHUNK, 64 * CHUNK, 200 * CHUNK + 100))
        memory = bytearray(rng.randbytes(size))
        base = bytearray(memory)
        for _ in range(rng.randint(0, 6)):
            memory[rng.randrange(size)] ^= 0x01
        every = [
            offset
            for offset in range(0, size, CHUNK)
            if memory[offset : offset + CHUNK] != base[offset : offset + CHUNK]
        ]
        assert changed_chunks(_address(memory), size, base) == every


def test_a_delta_composed_onto_its_base_is_the_new_state() -> None:
    size = 16 * CHUNK
    memory = bytearray(size)
    memory[CHUNK : 2 * CHUNK] = b"\x01" * CHUNK
    tracker = ChangeTracker()
    kv = {b"a": b"1", b"b": b"2"}
    table = _table("r1", "r2", entries=2)
    old = table.records()
    first = tracker.capture(_address(memory), size, _rest(generation=1), kv, table)
    assert first.delta is None and first.state is not None and first.changed
    tracker.acknowledged(first, seq=1, checksum=7)
    assert tracker.base == (1, 7)
    base_state = first.state

    memory[3 * CHUNK + 5] = 9
    memory[CHUNK : 2 * CHUNK] = bytes(CHUNK)  # a chunk that becomes zero
    kv = {b"a": b"1", b"c": b"3"}
    table.record(_records("r3")[0])  # r1 leaves the head, r3 comes
    replies = table.records()
    assert replies == (old[1], *_records("r3"))
    second = tracker.capture(_address(memory), size, _rest(generation=2), kv, table)
    assert second.delta is not None and second.changed
    delta = decode_delta(encode_delta(second.delta))
    assert [offset for offset, _ in delta.chunks] == [CHUNK, 3 * CHUNK]
    assert delta.kv_put == ((b"c", b"3"),) and delta.kv_delete == (b"b",)
    assert delta.replies_dropped == 1
    assert [r.request_id for r in delta.replies_added] == ["r3"]
    expected = _rest(
        generation=2,
        memory_size=size,
        memory=memory_segments(memory),
        kv=kv,
        replies=replies,
    )
    _same_state(compose(base_state, delta), expected)
    _same_state(tracker.whole_state(second), expected)
    tracker.acknowledged(second, seq=2, checksum=8)
    third = tracker.capture(_address(memory), size, _rest(generation=3), kv, table)
    assert third.delta is not None and not third.changed
    assert third.delta.replies_dropped == 0 and third.delta.replies_added == ()


def test_a_delta_does_not_pay_when_memory_grew_or_most_chunks_changed() -> None:
    tracker = ChangeTracker()
    memory = bytearray(8 * CHUNK)
    table = _table()
    first = tracker.capture(_address(memory), len(memory), _rest(), {}, table)
    tracker.acknowledged(first, seq=1, checksum=1)
    memory[: 5 * CHUNK] = b"\x07" * (5 * CHUNK)
    assert tracker.capture(_address(memory), len(memory), _rest(), {}, table).delta is None
    grown = bytearray(16 * CHUNK)
    assert tracker.capture(_address(grown), len(grown), _rest(), {}, table).delta is None
    tracker.reset()
    assert tracker.base is None


def test_a_reply_table_that_did_not_just_move_on_is_sent_whole() -> None:
    tracker = ChangeTracker()
    memory = bytearray(4 * CHUNK)
    table = _table("r1", "r2", "r3", entries=3)
    old = table.records()
    first = tracker.capture(_address(memory), len(memory), _rest(), {}, table)
    tracker.acknowledged(first, seq=1, checksum=1)
    table.restore(table.window, (old[0], old[2], old[1]), (), 0)  # reordered
    reordered = tracker.capture(_address(memory), len(memory), _rest(), {}, table)
    assert reordered.delta is None and reordered.state is not None
    assert reordered.state.replies == (old[0], old[2], old[1])
    tracker.acknowledged(reordered, seq=2, checksum=2)
    for record in _records("r4", "r5"):
        table.record(record)  # r1 and r3 leave the head
    delta = tracker.capture(_address(memory), len(memory), _rest(), {}, table).delta
    assert delta is not None and delta.replies_dropped == 2
    assert [r.request_id for r in delta.replies_added] == ["r4", "r5"]
    table.record(ReplyRecord("r4", "", b"again"))  # an id recorded again leaves its place
    assert tracker.capture(_address(memory), len(memory), _rest(), {}, table).delta is None


def test_a_reply_table_that_turned_over_since_the_base_sends_what_it_holds() -> None:
    tracker = ChangeTracker()
    memory = bytearray(4 * CHUNK)
    table = _table("r1", "r2", entries=3)
    first = tracker.capture(_address(memory), len(memory), _rest(), {}, table)
    tracker.acknowledged(first, seq=1, checksum=1)
    for record in _records("r3", "r4", "r5", "r6", "r7"):  # read-only calls: no checkpoint
        table.record(record)
    capture = tracker.capture(_address(memory), len(memory), _rest(), {}, table)
    assert capture.delta is not None and capture.delta.replies_dropped == 2
    assert [r.request_id for r in capture.delta.replies_added] == ["r5", "r6", "r7"]
    assert tracker.whole_state(capture).replies == table.records()
    tracker.acknowledged(capture, seq=2, checksum=2)
    table.record(_records("r8")[0])
    again = tracker.capture(_address(memory), len(memory), _rest(), {}, table)
    assert again.delta is not None and again.delta.replies_dropped == 1
    assert tracker.whole_state(again).replies == table.records()


def test_a_delta_that_does_not_fit_its_base_is_refused_naming_why() -> None:
    tracker = ChangeTracker()
    memory = bytearray(4 * CHUNK)
    table = _table()
    first = tracker.capture(_address(memory), len(memory), _rest(), {}, table)
    tracker.acknowledged(first, seq=1, checksum=1)
    memory[0] = 1
    capture = tracker.capture(_address(memory), len(memory), _rest(), {}, table)
    assert capture.delta is not None and first.state is not None
    smaller = replace(first.state, memory_size=2 * CHUNK, memory=())
    with pytest.raises(StorageError, match="memory of 16384 bytes; its base has 8192"):
        compose(smaller, capture.delta)
    misplaced = replace(capture.delta, chunks=((100, bytes(CHUNK)),))
    with pytest.raises(StorageError, match="chunk out of place"):
        compose(first.state, misplaced)
    other = replace(first.state, guid="local:" + "c" * 32)
    with pytest.raises(StorageError, match="does not fit the stored state"):
        compose(other, capture.delta)
    with pytest.raises(StorageError, match="bad magic"):
        decode_delta(b"HXSNAP\x01\x00")
    with pytest.raises(StorageError, match="damaged"):
        decode_delta(encode_delta(capture.delta)[:-3])


def test_a_live_atom_read_only_call_changes_nothing_durable(runtime: Runtime) -> None:
    atom = runtime.create(runtime.load(example("counter")), GUID_A, StandaloneHost())
    tracker = ChangeTracker()
    first = atom.capture_changes(tracker)
    assert first is not None and first.state is not None
    tracker.acknowledged(first, seq=1, checksum=1)
    atom.invoke("incr", codec.pack(5), request_id="req-1")
    mutated = atom.capture_changes(tracker)
    assert mutated is not None and mutated.changed and mutated.delta is not None
    assert 1 <= len(mutated.delta.chunks) <= 2
    # The delta composed onto the base is exactly the atom's snapshot.
    _same_state(compose(first.state, mutated.delta), decode_state(atom.snapshot()))
    tracker.acknowledged(mutated, seq=2, checksum=2)
    # A call leaves its method and arguments in the atom's memory, so the
    # first get differs from the incr before it; the next get does not.
    atom.invoke("get", b"", request_id="req-2")
    first_get = atom.capture_changes(tracker)
    assert first_get is not None and first_get.changed
    tracker.acknowledged(first_get, seq=3, checksum=3)
    atom.invoke("get", b"", request_id="req-3")
    read = atom.capture_changes(tracker)
    assert read is not None and read.delta is not None and not read.changed
    assert [r.request_id for r in read.delta.replies_added] == ["req-3"]


def test_daemon_and_reentrant_atoms_are_not_tracked(runtime: Runtime) -> None:
    atom = runtime.create(
        runtime.load(example("counter")), GUID_A, StandaloneHost(), reentrant=True
    )
    assert atom.capture_changes(ChangeTracker()) is None


def test_composing_splices_runs_into_the_same_memory_as_rebuilding_it() -> None:
    rng = random.Random(7)
    size = 512 * CHUNK
    for _ in range(30):
        memory = bytearray(size)
        for _ in range(rng.randint(0, 12)):
            start = rng.randrange(0, size, CHUNK)
            end = min(size, start + rng.randint(1, 300) * CHUNK)
            memory[start:end] = bytes([rng.randint(1, 255)]) * (end - start)
        base = _rest(memory_size=size, memory=memory_segments(memory))
        chunks = []
        for offset in sorted(rng.sample(range(0, size, CHUNK), rng.randint(1, 40))):
            data = bytes(CHUNK) if rng.random() < 0.3 else bytes([rng.randint(1, 255)]) * CHUNK
            chunks.append((offset, data))
            memory[offset : offset + CHUNK] = data
        delta = StateDelta(size, tuple(chunks), (), (), 0, (), _rest())
        composed = compose(base, delta)
        assert _memory(composed) == memory
        starts = [offset for offset, _ in composed.memory]
        ends = [offset + len(data) for offset, data in composed.memory]
        assert starts == sorted(starts) and all(
            e <= s for e, s in zip(ends[:-1], starts[1:], strict=True)
        )


def test_an_idle_atom_gives_up_its_base_copy(runtime: Runtime) -> None:
    atom = runtime.create(runtime.load(example("counter")), GUID_A, StandaloneHost())
    active = ActiveAtom(GUID_A, atom, pb.AtomMeta(), TAD("n1", 1))
    tracker = active.changes = ChangeTracker()
    capture = atom.capture_changes(tracker)
    assert capture is not None
    tracker.acknowledged(capture, seq=1, checksum=1)
    Checkpointing.forget_idle_base(active, active.last_used + IDLE_BASE_S / 2)
    assert tracker.base == (1, 1)
    with active.send_lock:  # a checkpoint under way keeps it
        Checkpointing.forget_idle_base(active, active.last_used + IDLE_BASE_S + 1)
    assert tracker.base == (1, 1)
    Checkpointing.forget_idle_base(active, active.last_used + IDLE_BASE_S + 1)
    assert tracker.base is None


def test_a_chain_composed_at_once_is_the_chain_composed_one_at_a_time() -> None:
    base = AtomState(
        module_hash="ab" * 32,
        guid="s1:chain",
        memory_size=4 * CHUNK,
        memory=((0, b"\x01" * CHUNK),),
        globals=(("g", "i32", 0),),
        kv={b"a": b"1", b"b": b"2"},
        replies=(ReplyRecord("c/0", "", b"0", 1), ReplyRecord("c/1", "", b"1", 1)),
    )
    rest = replace(base, memory=(), kv={}, replies=())
    deltas = [
        StateDelta(
            4 * CHUNK,
            ((CHUNK, b"\x02" * CHUNK),),
            ((b"c", b"3"),),
            (b"a",),
            1,
            (ReplyRecord("c/2", "", b"2", 1),),
            replace(rest, generation=1),
        ),
        StateDelta(
            4 * CHUNK,
            ((0, bytes(CHUNK)), (CHUNK, b"\x03" * CHUNK)),
            ((b"a", b"4"),),
            (b"c",),
            2,
            (ReplyRecord("c/3", "", b"3", 1),),
            replace(rest, generation=2),
        ),
        StateDelta(
            4 * CHUNK,
            ((3 * CHUNK, b"\x05" * CHUNK),),
            (),
            (b"b",),
            1,
            (ReplyRecord("c/4", "", b"4", 1), ReplyRecord("c/5", "", b"5", 1)),
            replace(rest, generation=3),
        ),
    ]
    one_by_one = base
    for delta in deltas:
        one_by_one = compose(one_by_one, delta)
    at_once = compose_chain(base, deltas)
    assert encode_state(at_once) == encode_state(one_by_one)
    assert at_once.kv == {b"a": b"4"} and [r.request_id for r in at_once.replies] == ["c/4", "c/5"]


def test_deltas_of_a_reply_table_compose_to_the_table_through_any_changes() -> None:
    rng = random.Random(13)
    table = ReplyTable(ReplyWindow(5))
    memory = bytearray(4 * CHUNK)
    tracker = ChangeTracker()
    stored: AtomState | None = None
    for step in range(400):
        for _ in range(rng.choice((0, 1, 1, 2, 7))):
            table.record(ReplyRecord(f"r{rng.randrange(60)}", "", b"%d" % step))
        if rng.random() < 0.03:
            records = list(table.records())
            rng.shuffle(records)
            table.restore(table.window, tuple(records), (), 0)
        capture = tracker.capture(_address(memory), len(memory), _rest(), {}, table)
        if capture.delta is None:
            assert capture.state is not None
            stored = capture.state
        else:
            assert stored is not None
            stored = compose(stored, decode_delta(encode_delta(capture.delta)))
        assert stored.replies == table.records()
        assert tracker.whole_state(capture).replies == table.records()
        if rng.random() < 0.8:
            tracker.acknowledged(capture, seq=step + 1, checksum=step)
        else:  # not acknowledged: the storesite keeps the state before it
            tracker.reset()
