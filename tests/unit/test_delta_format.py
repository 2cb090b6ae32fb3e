"""The delta's wire and record format: chunks deflated (format 2), format 1 still read
(docs/DESIGN.md §6 "Incremental checkpoints")."""

from __future__ import annotations

import os
import pathlib
import zlib
from collections.abc import Iterator
from dataclasses import replace

import msgpack
import pytest
from test_checkpoint_chain import _mark_format, _rest

from hermesx.core.delta import MAGIC, StateDelta, decode_delta, encode_delta
from hermesx.core.errors import StorageError
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import (
    CHUNK,
    AtomState,
    ReplyRecord,
    decode_state,
    encode_state,
    record_fields,
    snapshot_checksum,
)
from hermesx.rpc.proto import hermesx_pb2 as pb
from storesite.deltas import put_delta
from storesite.records import Provenance
from storesite.store import AtomStore

SID = "s1"
TAD1 = TAD("n1", 1)
MEMORY = 8 * CHUNK
GUID_X = "00000000-0000-4000-8000-000000000001"

# A counter's changed chunk: zeros but a few words (here, near its end).
SPARSE = bytes(CHUNK - 16) + (7).to_bytes(8, "little") + (3).to_bytes(8, "little")
NOISE = os.urandom(CHUNK)


def _delta(
    chunks: tuple[tuple[int, bytes], ...], guid: str = GUID_X, generation: int = 1
) -> StateDelta:
    return StateDelta(
        memory_size=MEMORY,
        chunks=chunks,
        kv_put=((b"k", b"v"),),
        kv_delete=(b"gone",),
        replies_dropped=0,
        replies_added=(ReplyRecord(f"c/{generation}", "", b"ok", 1),),
        rest=_rest(guid, generation),
    )


def _format_1(delta: StateDelta) -> bytes:
    """A delta as format 1 wrote it: every chunk its whole 4 KiB.

    Written out here on purpose, not taken from hermesx.core.delta: stored
    format-1 records must stay readable whatever the product's encoder
    becomes, so this test keeps its own copy of the old layout."""
    body: bytes = msgpack.packb(
        [
            delta.memory_size,
            [[offset, data] for offset, data in delta.chunks],
            [[k, v] for k, v in delta.kv_put],
            list(delta.kv_delete),
            delta.replies_dropped,
            [record_fields(r) for r in delta.replies_added],
            encode_state(delta.rest),
        ],
        use_bin_type=True,
    )
    return MAGIC + b"\x01" + body


def _with_chunk(data: bytes, guid: str = GUID_X) -> bytes:
    """A format-2 delta whose one chunk is sent as ``data`` (made by hand)."""
    sent = encode_delta(_delta(((0, SPARSE),), guid))
    fields = msgpack.unpackb(sent[len(MAGIC) + 1 :], raw=False)
    fields[1] = [[0, data]]
    return MAGIC + b"\x02" + msgpack.packb(fields, use_bin_type=True)


def test_chunks_travel_deflated_and_come_back_byte_for_byte() -> None:
    zero, sparse, noise = (0, bytes(CHUNK)), (CHUNK, SPARSE), (2 * CHUNK, NOISE)
    delta = _delta((zero, sparse, noise))
    data = encode_delta(delta)
    assert data[len(MAGIC)] == 2
    assert decode_delta(data) == delta
    # The zero and sparse chunks shrink to a few bytes; random bytes go as they are.
    sent = msgpack.unpackb(data[len(MAGIC) + 1 :], raw=False)[1]
    assert len(sent[0][1]) < 64 and len(sent[1][1]) < 64 and sent[2][1] == NOISE
    # A counter-like delta (two sparse chunks) is far under an LMDB leaf page's ~2 KB.
    assert len(encode_delta(_delta(((0, SPARSE), (CHUNK, SPARSE[::-1]))))) < 1024


def test_a_delta_of_format_1_is_still_read() -> None:
    delta = _delta(((0, SPARSE), (CHUNK, NOISE)))
    old = _format_1(delta)
    assert decode_delta(old) == delta
    assert len(old) > 2 * CHUNK > len(encode_delta(delta))


@pytest.mark.parametrize(
    ("chunk", "why"),
    [
        (zlib.compress(SPARSE, 1, -15)[:-3], "does not inflate to 4096"),
        (zlib.compress(bytes(CHUNK + 1), 1, -15), "does not inflate to 4096"),
        (zlib.compress(bytes(100), 1, -15), "does not inflate to 4096"),
        (zlib.compress(SPARSE, 1, -15) + b"\x00", "does not inflate to 4096"),
        # 64 MiB of zeros deflated: refused after inflating one chunk, not 64 MiB.
        (zlib.compress(bytes(64 << 20), 1, -15), "does not inflate to 4096"),
        (b"\xff" * 40, "damaged"),
        (b"", "does not inflate to 4096"),
    ],
)
def test_a_damaged_deflated_chunk_is_a_clear_error(chunk: bytes, why: str) -> None:
    with pytest.raises(StorageError, match="checkpoint delta is damaged") as info:
        decode_delta(_with_chunk(chunk))
    assert why in str(info.value)


def test_truncated_and_unknown_deltas_are_clear_errors() -> None:
    data = encode_delta(_delta(((0, SPARSE),)))
    for cut in (len(data) - 1, len(data) // 2, len(MAGIC) + 1):
        with pytest.raises(StorageError, match="checkpoint delta is damaged"):
            decode_delta(data[:cut])
    with pytest.raises(StorageError, match=r"format 3 is not supported \(this side reads 1, 2"):
        decode_delta(MAGIC + b"\x03" + data[len(MAGIC) + 1 :])
    with pytest.raises(StorageError, match="bad magic"):
        decode_delta(data[:4])


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[AtomStore]:
    with AtomStore(SID, tmp_path / "data", init=True) as s:
        yield s


def _register(store: AtomStore) -> tuple[str, int]:
    guid = str(GUID.new(SID))
    snapshot = encode_state(
        AtomState(
            module_hash="ab" * 32,
            guid=guid,
            memory_size=MEMORY,
            memory=((0, b"\x01" + bytes(CHUNK - 1)),),
            globals=(("g", "i32", 0),),
        )
    )
    checksum = snapshot_checksum(snapshot)
    meta = pb.AtomMeta(name="a", module_hash="ab" * 32)
    store.register_atom(guid, meta, TAD1, snapshot, Provenance(checksum=checksum, generation=0))
    return guid, checksum


def test_a_chain_of_both_formats_composes_to_the_same_state(store: AtomStore) -> None:
    """Records written by an older node (format 1) and a newer one (format 2) on one chain."""
    guid, name = _register(store)
    memory = bytearray(MEMORY)
    memory[0] = 1
    for generation in range(1, 7):
        chunk = bytes([generation]) * 8 + SPARSE[8:] if generation % 3 else NOISE
        offset = CHUNK * (generation % 4)
        memory[offset : offset + CHUNK] = chunk
        delta = _delta(((offset, chunk),), guid, generation)
        data = _format_1(delta) if generation % 2 else encode_delta(delta)
        check = Provenance(checksum=snapshot_checksum(data), generation=generation)
        outcome = put_delta(store, guid, TAD1, generation, data, check, generation - 1, name)
        assert outcome.stored, outcome.refused
        name = outcome.checksum
    state = decode_state(store.latest_checkpoint(guid).snapshot)
    composed = bytearray(state.memory_size)
    for offset, run in state.memory:
        composed[offset : offset + len(run)] = run
    assert composed == memory and state.generation == 6 and state.kv == {b"k": b"v"}


def test_a_delta_with_a_damaged_chunk_is_refused_and_the_store_keeps_serving(
    store: AtomStore,
) -> None:
    guid, name = _register(store)
    data = _with_chunk(zlib.compress(bytes(100), 1, -15), guid)
    check = Provenance(checksum=snapshot_checksum(data), generation=1)
    outcome = put_delta(store, guid, TAD1, 1, data, check, 0, name)
    assert not outcome.stored and "does not inflate to 4096" in outcome.refused
    assert "send the whole state" in outcome.refused
    # Nothing was written: the first checkpoint is still the latest, and a good delta fits it.
    assert store.latest_checkpoint(guid).seq == 0
    good = encode_delta(_delta(((CHUNK, SPARSE),), guid, 1))
    check = Provenance(checksum=snapshot_checksum(good), generation=1)
    assert put_delta(store, guid, TAD1, 1, good, check, 0, name).stored


def test_chunks_that_do_not_deflate_stop_the_trying_but_all_come_back() -> None:
    noise = tuple((i * CHUNK, os.urandom(CHUNK)) for i in range(6))
    delta = replace(_delta((*noise, (6 * CHUNK, SPARSE))), memory_size=7 * CHUNK)
    data = encode_delta(delta)
    sent = msgpack.unpackb(data[len(MAGIC) + 1 :], raw=False)[1]
    # Four misses, then every chunk goes whole, the sparse one too.
    assert [len(d) for _, d in sent] == [CHUNK] * 7
    assert decode_delta(data) == delta


def test_a_store_of_format_3_with_old_deltas_opens_reads_them_and_takes_new_ones(
    tmp_path: pathlib.Path,
) -> None:
    data_dir = tmp_path / "old"
    with AtomStore(SID, data_dir, init=True) as old:
        guid, name = _register(old)
        for generation in (1, 2):
            data = _format_1(_delta(((CHUNK, bytes([generation]) * CHUNK),), guid, generation))
            check = Provenance(checksum=snapshot_checksum(data), generation=generation)
            outcome = put_delta(old, guid, TAD1, generation, data, check, generation - 1, name)
            name = outcome.checksum
    _mark_format(data_dir, b"3")
    with AtomStore(SID, data_dir) as store:
        state = decode_state(store.latest_checkpoint(guid).snapshot)
        assert dict(state.memory)[CHUNK] == bytes([2]) * CHUNK and state.generation == 2
        data = encode_delta(_delta(((CHUNK, SPARSE),), guid, 3))
        check = Provenance(checksum=snapshot_checksum(data), generation=3)
        assert put_delta(store, guid, TAD1, 3, data, check, 2, name).stored
        state = decode_state(store.latest_checkpoint(guid).snapshot)
        assert dict(state.memory)[CHUNK] == SPARSE and state.generation == 3
        with store._env.env.begin(db=store._env.about) as txn:
            assert bytes(txn.get(b"format")) == b"4"
