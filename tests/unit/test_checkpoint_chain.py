"""Delta records: stored as sent, composed when read, cut, expired, checked (docs/DESIGN.md §6)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import lmdb
import msgpack
import pytest

from hermesx.core.delta import StateDelta, encode_delta
from hermesx.core.errors import CheckpointDamagedError
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import (
    CHUNK,
    AtomState,
    ReplyRecord,
    decode_state,
    encode_state,
    snapshot_checksum,
)
from hermesx.rpc.proto import hermesx_pb2 as pb
from storesite.chain import MAX_CHAIN, unpack_record
from storesite.deltas import put_delta
from storesite.records import Provenance
from storesite.store import AtomStore

SID = "s1"
TAD1 = TAD("n1", 1)
MEMORY = 8 * CHUNK


@pytest.fixture
def data_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: pathlib.Path) -> Iterator[AtomStore]:
    with AtomStore(SID, data_dir, init=True) as s:
        yield s


def _rest(guid: str, generation: int = 1) -> AtomState:
    return AtomState(
        module_hash="ab" * 32,
        guid=guid,
        memory_size=0,
        memory=(),
        globals=(("g", "i32", generation),),
        generation=generation,
    )


def _first_state(guid: str) -> AtomState:
    """The state of an atom's first checkpoint: chunk 0 full of zeros but one byte."""
    return AtomState(
        module_hash="ab" * 32,
        guid=guid,
        memory_size=MEMORY,
        memory=((0, b"\x01" + bytes(CHUNK - 1)),),
        globals=(("g", "i32", 0),),
        replies=(ReplyRecord("c/0", "", b"0", 1),),
    )


def _register(store: AtomStore) -> tuple[str, int]:
    """A new atom whose first checkpoint (generation 0) has chunk 0 full of zeros but
    one byte; returns its GUID and that checkpoint's checksum."""
    guid = str(GUID.new(SID))
    state = _first_state(guid)
    snapshot = encode_state(state)
    checksum = snapshot_checksum(snapshot)
    meta = pb.AtomMeta(name="a", module_hash="ab" * 32)
    store.register_atom(guid, meta, TAD1, snapshot, Provenance(checksum=checksum, generation=0))
    return guid, checksum


def _delta(guid: str, generation: int) -> bytes:
    """Generation ``generation``: chunk 1 holds it, a reply added, the oldest dropped."""
    return encode_delta(
        StateDelta(
            memory_size=MEMORY,
            chunks=((CHUNK, bytes([generation % 256]) * CHUNK),),
            kv_put=((f"k{generation}".encode(), b"v"),),
            kv_delete=(),
            replies_dropped=1,
            replies_added=(ReplyRecord(f"c/{generation}", "", str(generation).encode(), 1),),
            rest=_rest(guid, generation),
        )
    )


def _put(store: AtomStore, guid: str, generation: int, base: int) -> int:
    """Store generation ``generation`` as a delta on seq ``generation - 1`` named ``base``;
    the new checkpoint's name."""
    data = _delta(guid, generation)
    check = Provenance(checksum=snapshot_checksum(data), generation=generation)
    outcome = put_delta(store, guid, TAD1, generation, data, check, generation - 1, base)
    assert outcome.stored, outcome.refused
    return outcome.checksum


def _assert_holds(snapshot: bytes, generation: int) -> None:
    state = decode_state(snapshot)
    assert state.generation == generation and state.globals == (("g", "i32", generation),)
    memory = bytearray(state.memory_size)
    for offset, run in state.memory:
        memory[offset : offset + len(run)] = run
    assert memory[:CHUNK] == b"\x01" + bytes(CHUNK - 1)
    assert memory[CHUNK : 2 * CHUNK] == bytes([generation % 256]) * CHUNK
    assert set(state.kv) == {f"k{g}".encode() for g in range(1, generation + 1)}
    assert [r.request_id for r in state.replies] == [f"c/{generation}"]


def _records(store: AtomStore, guid: str) -> dict[int, list[object]]:
    """Slot number → the stored record's fields, read straight from LMDB."""
    env = store._env
    prefix = guid.encode() + b"/"
    found: dict[int, list[object]] = {}
    with env.env.begin(db=env.checkpoints) as txn:
        for key, value in txn.cursor():
            if bytes(key).startswith(prefix):
                number = int.from_bytes(bytes(key)[len(prefix) :], "big")
                found[number] = msgpack.unpackb(bytes(value), raw=False)
    return found


def test_deltas_are_stored_as_delta_records_and_read_back_whole(store: AtomStore) -> None:
    guid, name = _register(store)
    for generation in range(1, 6):
        name = _put(store, guid, generation, name)
    records = _records(store, guid)
    # Slot 1 is the whole first checkpoint every delta composes from; 2..6 are deltas.
    assert len(records[1]) == 6 and all(len(records[n]) == 7 for n in range(2, 7))
    latest = store.latest_checkpoint(guid)
    assert latest.seq == 5 and latest.generation == 5
    assert latest.checksum == snapshot_checksum(latest.snapshot)
    _assert_holds(latest.snapshot, 5)
    # The window names the latest and three before it, each whole.
    history = store.checkpoint_history(guid)
    assert [c.seq for c in history] == [2, 3, 4, 5]
    for checkpoint in history:
        _assert_holds(checkpoint.snapshot, checkpoint.generation)


def test_a_long_chain_is_cut_by_a_whole_checkpoint_and_old_slots_go(store: AtomStore) -> None:
    guid, name = _register(store)
    total = MAX_CHAIN + 6
    for generation in range(1, total + 1):
        name = _put(store, guid, generation, name)
    records = _records(store, guid)
    whole = [n for n, fields in records.items() if len(fields) == 6]
    # The delta after MAX_CHAIN deltas was composed and written whole.
    assert whole == [MAX_CHAIN + 2]
    # Nothing below the oldest kept checkpoint's anchor is kept.
    assert min(records) == MAX_CHAIN + 2 and max(records) == total + 1
    latest = store.latest_checkpoint(guid)
    _assert_holds(latest.snapshot, total)
    assert store.status().deltas_written == total


def test_a_damaged_delta_record_is_found_when_read_and_never_restored(store: AtomStore) -> None:
    guid, name = _register(store)
    for generation in range(1, 5):
        name = _put(store, guid, generation, name)
    # A bit of slot 3 (generation 2) flips: slots 3, 4, 5 compose through it.
    _damage(store, guid, 3)
    with pytest.raises(CheckpointDamagedError) as info:
        store.latest_checkpoint(guid)
    message = str(info.value)
    assert f"checkpoint #3 of atom {guid}" in message and "is damaged" in message
    # Slot 2 holds generation 1 only, short of the 4 acknowledged: not restored.
    assert f"atom {guid} is not restored" in message
    with store._env.env.begin(db=store._env.checkpoints) as txn:
        raw = bytes(txn.get(guid.encode() + b"/" + (3).to_bytes(8, "big")))
    with pytest.raises(CheckpointDamagedError):
        unpack_record(guid, raw, 3)
    with pytest.raises(CheckpointDamagedError):
        store.checkpoint_history(guid)


def test_a_delta_on_a_damaged_latest_record_is_refused(store: AtomStore) -> None:
    guid, name = _register(store)
    name = _put(store, guid, 1, name)
    env = store._env
    key = guid.encode() + b"/" + (2).to_bytes(8, "big")
    with env.env.begin(write=True, db=env.checkpoints) as txn:
        fields = msgpack.unpackb(bytes(txn.get(key)), raw=False)
        fields[5] ^= 1  # the stored CRC no longer matches
        txn.put(key, msgpack.packb(fields, use_bin_type=True))
    data = _delta(guid, 2)
    check = Provenance(checksum=snapshot_checksum(data), generation=2)
    outcome = put_delta(store, guid, TAD1, 2, data, check, 1, name)
    assert not outcome.stored and "is damaged" in outcome.refused
    assert "send the whole state" in outcome.refused


def test_a_move_after_deltas_stages_and_commits_whole(store: AtomStore) -> None:
    guid, name = _register(store)
    for generation in range(1, 4):
        name = _put(store, guid, generation, name)
    age = store.moves.prepare(guid, TAD1, "n2")
    moved = store.latest_checkpoint(guid).snapshot
    check = Provenance(checksum=snapshot_checksum(moved), generation=3)
    store.moves.stage(guid, TAD("n2", age), moved, check)
    store.moves.commit(guid, TAD("n2", age), b"", Provenance(incarnation="i2"))
    latest = store.latest_checkpoint(guid)
    assert latest.tad == TAD("n2", age) and latest.seq == 0
    _assert_holds(latest.snapshot, 3)
    # The window still reads every kept checkpoint, deltas composed.
    assert [c.generation for c in store.checkpoint_history(guid)] == [1, 2, 3, 3]


def test_a_store_of_the_previous_format_opens_reads_and_takes_deltas(
    data_dir: pathlib.Path,
) -> None:
    """A format-2 store: whole records only, atom records without window anchors."""
    with AtomStore(SID, data_dir, init=True) as store:
        guid, _ = _register(store)
        state = _first_state(guid)
        for seq in range(1, 6):
            snapshot = encode_state(state)
            check = Provenance(checksum=snapshot_checksum(snapshot), generation=0)
            store.put_checkpoint(guid, TAD1, seq, snapshot, check)
        name = snapshot_checksum(encode_state(state))
    env = lmdb.open(str(data_dir / "lmdb"), max_dbs=8, subdir=True)
    try:
        atoms, about = env.open_db(b"atoms"), env.open_db(b"store")
        with env.begin(write=True) as txn:
            record = msgpack.unpackb(bytes(txn.get(guid.encode(), db=atoms)), raw=False)
            del record["ck_anchors"]
            txn.put(guid.encode(), msgpack.packb(record, use_bin_type=True), db=atoms)
            txn.put(b"format", b"2", db=about)
    finally:
        env.close()
    with AtomStore(SID, data_dir) as store:
        assert store.latest_checkpoint(guid).seq == 5
        for generation in range(1, 8):
            data = _delta(guid, generation)
            check = Provenance(checksum=snapshot_checksum(data), generation=generation)
            seq = 5 + generation
            outcome = put_delta(store, guid, TAD1, seq, data, check, seq - 1, name)
            assert outcome.stored, outcome.refused
            name = outcome.checksum
        _assert_holds(store.latest_checkpoint(guid).snapshot, 7)
        records = _records(store, guid)
        # Slot 6, the last whole one, anchors every kept delta; nothing older is kept.
        assert min(records) == 6 and len(records[6]) == 6
        with store._env.env.begin(db=store._env.about) as txn:
            assert bytes(txn.get(b"format")) == b"4"


def _mark_format(data_dir: pathlib.Path, version: bytes) -> None:
    """Write ``version`` as the format of the closed store in ``data_dir``, as an
    older or newer storesite would have left it."""
    env = lmdb.open(str(data_dir / "lmdb"), max_dbs=8, subdir=True)
    try:
        with env.begin(write=True, db=env.open_db(b"store")) as txn:
            txn.put(b"format", version)
    finally:
        env.close()


def test_a_store_of_a_newer_format_is_refused(data_dir: pathlib.Path) -> None:
    AtomStore(SID, data_dir, init=True).close()
    _mark_format(data_dir, b"9")
    with pytest.raises(Exception, match="is of format 9, newer than this storesite's 4"):
        AtomStore(SID, data_dir)


def test_a_cut_that_finds_its_chain_damaged_refuses_the_delta(
    store: AtomStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("storesite.chain.MAX_CHAIN", 4)
    guid, name = _register(store)
    for generation in range(1, 5):
        name = _put(store, guid, generation, name)
    _damage(store, guid, 2)  # the first delta: not the latest, so not checked by a delta
    data = _delta(guid, 5)
    check = Provenance(checksum=snapshot_checksum(data), generation=5)
    outcome = put_delta(store, guid, TAD1, 5, data, check, 4, name)
    assert not outcome.stored
    assert "the chain of the latest checkpoint is damaged" in outcome.refused
    assert f"checkpoint #2 of atom {guid}" in outcome.refused
    assert store.get(guid).checkpoint_seq == 4
    with pytest.raises(CheckpointDamagedError):
        store.latest_checkpoint(guid)
    # The node sends its whole state then: stored, and the atom is readable again.
    state = AtomState(
        module_hash="ab" * 32,
        guid=guid,
        memory_size=MEMORY,
        memory=((0, b"\x01" + bytes(CHUNK - 1)),),
        globals=(("g", "i32", 5),),
        generation=5,
    )
    snapshot = encode_state(state)
    check = Provenance(checksum=snapshot_checksum(snapshot), generation=5)
    assert store.put_checkpoint(guid, TAD1, 6, snapshot, check)
    assert store.latest_checkpoint(guid).snapshot == snapshot


def _damage(store: AtomStore, guid: str, number: int) -> None:
    """Flip a bit inside the delta stored in slot ``number``."""
    env = store._env
    key = guid.encode() + b"/" + number.to_bytes(8, "big")
    with env.env.begin(write=True, db=env.checkpoints) as txn:
        fields = msgpack.unpackb(bytes(txn.get(key)), raw=False)
        delta = bytearray(fields[4])
        delta[len(delta) // 2] ^= 0x10
        fields[4] = bytes(delta)
        txn.put(key, msgpack.packb(fields, use_bin_type=True))
