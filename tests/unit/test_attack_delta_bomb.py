"""Attacks on delta format 2 (docs/DESIGN.md §6 "Incremental checkpoints"): chunks
travel deflated, so a delta may decode to far more than it carries.

A node-role peer could send a delta that repeats one deflated chunk of zeros
(~24 bytes for 4 KiB) and have a storesite inflate ~170 times its size before
any check of its shape; and an atom that rewrites much compressible memory per
call could build chains of 64 small deltas, each decoded on every recovery,
were a chain's bound counted in the bytes its deltas are stored as.
"""

from __future__ import annotations

import os
import pathlib
import zlib
from collections.abc import Iterator

import msgpack
import pytest
from test_checkpoint_batch import _checkpoint_request, _Site
from test_delta_format import _format_1, _rest

import storesite.checkpoints as checkpoints_module
from hermesx.core.delta import MAGIC, StateDelta, decode_delta, encode_delta
from hermesx.core.errors import StorageError
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import CHUNK, AtomState, encode_state, snapshot_checksum
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.storesite_client import CHECKPOINT_DELTA
from storesite.batches import put_batch
from storesite.chain import CHAIN_BYTES_FLOOR
from storesite.deltas import put_delta
from storesite.records import Provenance
from storesite.store import AtomStore

SID = "s1"
TAD1 = TAD("n1", 1)
MEMORY = 16 * CHUNK  # the atom has 16 chunks of memory
ZERO = zlib.compress(bytes(CHUNK), 9, -15)  # one chunk of zeros, raw deflate: ~20 bytes


def _crafted(guid: str, items: list[list[object]], memory_size: int = MEMORY) -> bytes:
    """A format-2 delta made by hand (a peer's, not a node's), chunks as ``items``."""
    body = msgpack.packb([memory_size, items, [], [], 0, [], encode_state(_rest(guid))])
    return MAGIC + bytes([2]) + body


BOMB = [[0, ZERO]] * 5000  # the same chunk again and again


def test_a_small_delta_does_not_decode_to_more_memory_than_its_atom_has() -> None:
    data = _crafted("00000000-0000-4000-8000-000000000001", BOMB)
    with pytest.raises(StorageError, match="chunk out of place") as info:
        decode_delta(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("offsets", "memory_size", "why"),
    [
        ([0, 0], MEMORY, "chunk out of place"),  # repeated
        ([CHUNK, 0], MEMORY, "chunk out of place"),  # descending
        ([100], MEMORY, "chunk out of place"),  # not a chunk's start
        ([-CHUNK], MEMORY, "chunk out of place"),
        ([MEMORY], MEMORY, "chunk out of place"),  # past the memory
        ([0], (1 << 32) + CHUNK, "a wasm32 memory has 0 to 4294967296"),
        ([0], -CHUNK, "a wasm32 memory has 0 to 4294967296"),
    ],
)
def test_chunks_out_of_place_are_refused_before_any_is_inflated(
    offsets: list[int], memory_size: int, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inflated = 0
    real = zlib.decompressobj

    def counting(*args: int) -> object:
        nonlocal inflated
        inflated += 1
        return real(*args)

    monkeypatch.setattr(zlib, "decompressobj", counting)
    data = _crafted("00000000-0000-4000-8000-000000000001", [[o, ZERO] for o in offsets])
    data = data.replace(msgpack.packb(MEMORY), msgpack.packb(memory_size), 1)
    with pytest.raises(StorageError, match=why):
        decode_delta(data)
    assert inflated == 0


def test_chunks_over_the_readers_limit_are_refused() -> None:
    data = _crafted("00000000-0000-4000-8000-000000000001", [[0, ZERO], [CHUNK, ZERO]])
    assert len(decode_delta(data, 2 * CHUNK).chunks) == 2
    with pytest.raises(StorageError, match=r"has 2 chunks \(8192 bytes\), over the limit of 8191"):
        decode_delta(data, 2 * CHUNK - 1)


# ------------------------------------------------------------------ at the storesite


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[AtomStore]:
    with AtomStore(SID, tmp_path / "data", init=True) as s:
        yield s


def _register(store: AtomStore, memory: bytes, size: int = 0) -> tuple[str, bytes]:
    """A new atom whose memory of ``size`` bytes (else ``len(memory)``) starts ``memory``."""
    guid = str(GUID.new(SID))
    snapshot = encode_state(
        AtomState(
            module_hash="ab" * 32,
            guid=guid,
            memory_size=size or len(memory),
            memory=((0, memory),),
            globals=(("g", "i32", 0),),
        )
    )
    meta = pb.AtomMeta(name=guid[-6:], module_hash="ab" * 32)
    check = Provenance(checksum=snapshot_checksum(snapshot), generation=0)
    store.register_atom(guid, meta, TAD1, snapshot, check)
    return guid, snapshot


def _good(guid: str) -> bytes:
    return encode_delta(StateDelta(MEMORY, ((CHUNK, b"\x07" * CHUNK),), (), (), 0, (), _rest(guid)))


def _put(store: AtomStore, guid: str, data: bytes) -> tuple[bool, str]:
    """``data`` on ``guid``'s first checkpoint, as a lone request (gRPC, call channel)."""
    base = store.latest_checkpoint(guid).checksum
    check = Provenance(checksum=snapshot_checksum(data), generation=1)
    outcome = put_delta(store, guid, TAD1, 1, data, check, 0, base)
    return outcome.stored, outcome.refused


def test_a_bomb_is_refused_by_every_transport_and_the_storesite_keeps_serving(
    store: AtomStore,
) -> None:
    guid, _ = _register(store, b"\x01" * MEMORY)
    stored, refused = _put(store, guid, _crafted(guid, BOMB))
    assert not stored and "chunk out of place" in refused and "\n" not in refused
    # A batch of the call channel: that atom's delta refused, another atom's stored.
    other, _ = _register(store, b"\x01" * MEMORY)
    requests = []
    for who, data in ((guid, _crafted(guid, BOMB)), (other, _good(other))):
        head = _checkpoint_request(who, data, 1)
        base = store.latest_checkpoint(who).checksum
        delta = pb.CheckpointDelta(head=head, base_seq=0, base_checksum=base)
        requests.append((CHECKPOINT_DELTA, delta.SerializeToString()))
    site = _Site(store)
    outcomes = put_batch(site, requests)  # type: ignore[arg-type]
    bomb, good = (pb.CheckpointAck.FromString(o) for o in outcomes if isinstance(o, bytes))
    assert not bomb.stored and "chunk out of place" in bomb.refused
    assert good.stored and store.latest_checkpoint(other).seq == 1
    # Nothing of the bomb was written, and a good delta still fits.
    assert store.latest_checkpoint(guid).seq == 0
    assert _put(store, guid, _good(guid)) == (True, "")


def test_a_delta_decoding_past_the_storesites_checkpoint_limit_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    with AtomStore(SID, tmp_path / "small", init=True, max_checkpoint_bytes=4 * CHUNK) as small:
        guid, _ = _register(small, b"\x01" * CHUNK, MEMORY)
        zeros = [[o, ZERO] for o in range(0, 5 * CHUNK, CHUNK)]  # 20 KiB in ~150 bytes
        stored, refused = _put(small, guid, _crafted(guid, zeros))
        assert not stored and "over the limit of 16384 bytes" in refused
        assert _put(small, guid, _good(guid)) == (True, "")


# ------------------------------------------------------------------ a chain's bound


@pytest.mark.parametrize("fmt", [1, 2])
def test_composing_the_latest_chain_decodes_about_an_anchor_not_64_deltas(
    store: AtomStore, fmt: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = 64 * CHUNK
    guid, anchor = _register(store, os.urandom(memory))
    name = snapshot_checksum(anchor)
    # Each call rewrites all its memory with bytes that compress well (a buffer filled).
    for generation in range(1, 13):
        chunk = bytes([generation]) * CHUNK
        delta = StateDelta(
            memory_size=memory,
            chunks=tuple((o, chunk) for o in range(0, memory, CHUNK)),
            kv_put=(),
            kv_delete=(),
            replies_dropped=0,
            replies_added=(),
            rest=_rest(guid, generation),
        )
        data = _format_1(delta) if fmt == 1 else encode_delta(delta)
        check = Provenance(checksum=snapshot_checksum(data), generation=generation)
        outcome = put_delta(store, guid, TAD1, generation, data, check, generation - 1, name)
        assert outcome.stored, outcome.refused
        name = outcome.checksum
    decoded = 0

    def counting(data: bytes) -> StateDelta:
        nonlocal decoded
        delta = decode_delta(data)
        decoded += sum(len(d) for _, d in delta.chunks)
        return delta

    monkeypatch.setattr(checkpoints_module, "decode_delta", counting)
    store.latest_checkpoint(guid)  # what a recovery reads
    bound = max(len(anchor), CHAIN_BYTES_FLOOR) + memory
    assert decoded <= bound, (
        f"format {fmt}: composing the latest checkpoint decoded {decoded} bytes of chunks "
        f"(a chain's rule bounds it near {bound})"
    )
