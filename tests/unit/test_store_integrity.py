"""Checkpoint checksums, fallback and the checks at opening a store.

See docs/DESIGN.md §6, issue 11.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterator

import lmdb
import msgpack
import pytest

from hermesx.core.errors import StorageError
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import snapshot_checksum
from hermesx.rpc.proto import hermesx_pb2 as pb
from storesite.environment import check_lmdb_file
from storesite.records import Provenance
from storesite.store import AtomStore

SID = "s1"
AT = TAD("n1", 1)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[AtomStore]:
    with AtomStore(SID, tmp_path / "data", init=True) as s:
        yield s


def new_atom(store: AtomStore, generation: int = 1) -> str:
    guid = str(GUID.new(SID))
    snapshot = b"state-at-create"
    store.register_atom(
        guid,
        pb.AtomMeta(name="counter"),
        AT,
        snapshot,
        Provenance(checksum=snapshot_checksum(snapshot), generation=generation),
    )
    return guid


def put(store: AtomStore, guid: str, seq: int, snapshot: bytes, generation: int) -> None:
    assert store.put_checkpoint(
        guid, AT, seq, snapshot, Provenance(snapshot_checksum(snapshot), generation)
    )


def flip_a_bit_of_latest(store: AtomStore, guid: str, needle: bytes) -> None:
    """Damage the stored record of the latest checkpoint: one bit inside ``needle``."""
    number = store.get(guid).checkpoint_no
    key = guid.encode() + b"/" + number.to_bytes(8, "big")
    with store._env.env.begin(write=True, db=store._env.checkpoints) as txn:
        record = bytearray(txn.get(key))
        at = bytes(record).index(needle) + len(needle) // 2
        record[at] ^= 0x10
        txn.put(key, bytes(record))


def test_a_checkpoint_that_arrived_damaged_is_refused_and_nothing_changes(
    store: AtomStore,
) -> None:
    guid = new_atom(store)
    put(store, guid, 1, b"count=1", generation=2)
    with pytest.raises(StorageError) as info:
        store.put_checkpoint(
            guid, AT, 2, b"count=2", Provenance(checksum=snapshot_checksum(b"count=3"))
        )
    assert f"checkpoint of atom {guid} from {AT} seq 2 is damaged" in str(info.value)
    assert store.latest_checkpoint(guid).snapshot == b"count=1"


def test_every_stored_checkpoint_carries_its_checksum_and_generation(store: AtomStore) -> None:
    guid = new_atom(store)
    put(store, guid, 1, b"count=1", generation=2)
    # A writer that predates checksums still gets one stored.
    assert store.put_checkpoint(guid, AT, 2, b"count=2")
    history = store.checkpoint_history(guid)
    assert [(c.snapshot, c.checksum) for c in history] == [
        (b"state-at-create", snapshot_checksum(b"state-at-create")),
        (b"count=1", snapshot_checksum(b"count=1")),
        (b"count=2", snapshot_checksum(b"count=2")),
    ]
    assert [c.generation for c in history] == [1, 2, -1]


def test_a_flipped_bit_in_the_latest_acknowledged_checkpoint_is_never_restored(
    store: AtomStore,
) -> None:
    guid = new_atom(store)
    put(store, guid, 1, b"count=11" + bytes(100), generation=11)
    put(store, guid, 2, b"count=12" + bytes(100), generation=12)
    flip_a_bit_of_latest(store, guid, b"count=12")
    next_age = store.get(guid).next_age
    for read in (lambda: store.latest_checkpoint(guid), lambda: store.reserve_age(guid)):
        with pytest.raises(StorageError) as info:
            read()
        message = str(info.value)
        assert f"checkpoint #3 of atom {guid} ({AT} seq 2) is damaged" in message
        assert "lacks acknowledged calls" in message
        assert f"atom {guid} is not restored" in message
        assert "\n" not in message
    # A refused activation reserves no age.
    assert store.get(guid).next_age == next_age


def test_a_damaged_checkpoint_falls_back_when_the_previous_holds_every_acknowledged_call(
    store: AtomStore, caplog: pytest.LogCaptureFixture
) -> None:
    guid = new_atom(store)
    put(store, guid, 1, b"count=12", generation=12)
    # Passivation right after: the same state (generation 12) once more.
    store.passivated(
        guid,
        AT,
        b"count=12, dormant",
        Provenance(checksum=snapshot_checksum(b"count=12, dormant"), generation=12),
    )
    flip_a_bit_of_latest(store, guid, b"dormant")
    with caplog.at_level(logging.WARNING, logger="storesite.store"):
        checkpoint = store.latest_checkpoint(guid)
    assert checkpoint.snapshot == b"count=12"
    assert "is damaged" in caplog.text and "holds every acknowledged call" in caplog.text
    _age, activated_from = store.reserve_age(guid)
    assert activated_from.snapshot == b"count=12"


def test_a_damaged_record_frame_is_damage_too(store: AtomStore) -> None:
    guid = new_atom(store)
    put(store, guid, 1, b"count=1", generation=2)
    key = guid.encode() + b"/" + store.get(guid).checkpoint_no.to_bytes(8, "big")
    with store._env.env.begin(write=True, db=store._env.checkpoints) as txn:
        txn.put(key, b"\xc1 not msgpack")
    with pytest.raises(StorageError, match=r"checkpoint #2 of atom .* is damaged: its record"):
        store.latest_checkpoint(guid)


# ------------------------------------------------------------------ opening


def make_store(data: pathlib.Path, atoms: int = 40) -> list[str]:
    with AtomStore(SID, data, init=True) as store:
        guids = [new_atom(store) for _ in range(atoms)]
        for guid in guids:
            put(store, guid, 1, os.urandom(6000), generation=2)
    return guids


def test_a_missing_data_dir_is_refused_without_init(tmp_path: pathlib.Path) -> None:
    with pytest.raises(StorageError) as info:
        AtomStore(SID, tmp_path / "gone")
    assert str(info.value) == (
        f"storesite s1: data dir {tmp_path / 'gone'} does not exist; "
        "start with --init to create a new one"
    )
    assert not (tmp_path / "gone").exists()


def test_a_data_dir_without_a_store_is_refused_without_init(tmp_path: pathlib.Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(StorageError, match=r"no store in .*data\.mdb is missing.*--init"):
        AtomStore(SID, tmp_path / "data")


def test_a_truncated_store_is_refused_before_it_is_mapped(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    make_store(data)
    path = data / "lmdb" / "data.mdb"
    assert check_lmdb_file(path) == ""
    size = path.stat().st_size
    os.truncate(path, size // 2)
    with pytest.raises(StorageError) as info:
        AtomStore(SID, data)
    assert f"store {path} is damaged: it is {size // 2} bytes but its pages run to" in str(
        info.value
    )
    assert "(truncated); move it away and start with --init" in str(info.value)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(b""), "it is 0 bytes, too short"),
        (lambda p: p.write_bytes(os.urandom(20000)), "page size|not an LMDB meta page"),
    ],
)
def test_an_empty_or_foreign_file_is_refused(
    tmp_path: pathlib.Path, damage: object, reason: str
) -> None:
    data = tmp_path / "data"
    make_store(data, atoms=1)
    damage(data / "lmdb" / "data.mdb")  # type: ignore[operator]
    with pytest.raises(StorageError, match=reason):
        AtomStore(SID, data)


def test_a_store_of_another_storesite_is_refused_even_with_init(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    make_store(data, atoms=1)
    for init in (False, True):
        with pytest.raises(StorageError, match=f"the store in {data} belongs to storesite s1"):
            AtomStore("s2", data, init=init)


def test_init_sets_a_damaged_store_aside_and_keeps_a_healthy_one(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    guids = make_store(data, atoms=2)
    with AtomStore(SID, data, init=True) as store:  # healthy: opened as it is
        assert store.latest_checkpoint(guids[0]).generation == 2
    os.truncate(data / "lmdb" / "data.mdb", 8192 + 100)
    with AtomStore(SID, data, init=True) as store:
        assert store.status().atoms == 0
    aside = [p.name for p in data.iterdir() if p.name.startswith("lmdb.damaged-")]
    assert len(aside) == 1
    assert (data / aside[0] / "data.mdb").stat().st_size == 8192 + 100


def test_a_store_written_before_checksums_is_upgraded_in_place(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    (data / "lmdb").mkdir(parents=True)
    guid = str(GUID.new(SID))
    env = lmdb.open(str(data / "lmdb"), max_dbs=4, subdir=True)
    atoms, checkpoints = env.open_db(b"atoms"), env.open_db(b"checkpoints")
    env.open_db(b"modules")
    record = {
        "guid": guid,
        "meta": pb.AtomMeta(name="old").SerializeToString(),
        "loc": ["n1", 1],
        "dormant": True,
        "next_age": 2,
        "pending": None,
        "ck_age": 1,
        "ck_seq": 3,
        "ck_no": 1,
        "fwd": "",
        "adopted": False,
    }
    with env.begin(write=True) as txn:
        txn.put(guid.encode(), msgpack.packb(record, use_bin_type=True), db=atoms)
        txn.put(
            guid.encode() + b"/" + (1).to_bytes(8, "big"),
            msgpack.packb(["n1", 1, 3, b"old-state"], use_bin_type=True),
            db=checkpoints,
        )
    env.close()
    with AtomStore(SID, data) as store:
        checkpoint = store.latest_checkpoint(guid)
        assert (checkpoint.snapshot, checkpoint.checksum) == (
            b"old-state",
            snapshot_checksum(b"old-state"),
        )
    with pytest.raises(StorageError, match="belongs to storesite s1"):
        AtomStore("s9", data)


def test_an_older_store_of_another_storesite_is_refused(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    (data / "lmdb").mkdir(parents=True)
    env = lmdb.open(str(data / "lmdb"), max_dbs=4, subdir=True)
    atoms = env.open_db(b"atoms")
    guid = str(GUID.new("s7"))
    record = {"guid": guid, "meta": b"", "loc": ["n1", 1], "dormant": True, "next_age": 2}
    record.update(pending=None, ck_age=1, ck_seq=0, ck_no=0, fwd="", adopted=False)
    with env.begin(write=True) as txn:
        txn.put(guid.encode(), msgpack.packb(record, use_bin_type=True), db=atoms)
    env.close()
    with pytest.raises(StorageError, match=f"the store in {data} belongs to storesite s7"):
        AtomStore(SID, data)


def test_an_older_state_with_a_newer_seq_never_replaces_a_newer_one(store: AtomStore) -> None:
    guid = new_atom(store)
    put(store, guid, 1, b"count=12", generation=12)
    # The snapshot of 11 was taken first but drew its number last.
    assert not store.put_checkpoint(
        guid, AT, 2, b"count=11", Provenance(snapshot_checksum(b"count=11"), 11)
    )
    assert store.latest_checkpoint(guid).snapshot == b"count=12"
    put(store, guid, 3, b"count=13", generation=13)
    assert store.latest_checkpoint(guid).snapshot == b"count=13"


def test_a_damaged_periodic_checkpoint_falls_back_to_the_last_acknowledged_state(
    store: AtomStore,
) -> None:
    guid = new_atom(store)
    # Acknowledged as durable up to generation 5 (an explicit checkpoint).
    put(store, guid, 1, b"count=5", generation=5)
    for seq, generation in ((2, 9), (3, 14)):
        snapshot = b"count=%d" % generation
        assert store.put_checkpoint(
            guid,
            AT,
            seq,
            snapshot,
            Provenance(checksum=snapshot_checksum(snapshot), generation=generation, periodic=True),
        )
    assert store.get(guid).durable_generation == 5
    flip_a_bit_of_latest(store, guid, b"count=14")
    # Generation 9 keeps every call anyone was told is durable.
    assert store.latest_checkpoint(guid).snapshot == b"count=9"
    flip_a_bit_of_latest_number(store, guid, store.get(guid).checkpoint_no - 1, b"count=9")
    assert store.latest_checkpoint(guid).snapshot == b"count=5"
    flip_a_bit_of_latest_number(store, guid, store.get(guid).checkpoint_no - 2, b"count=5")
    with pytest.raises(StorageError, match="lacks acknowledged calls"):
        store.latest_checkpoint(guid)


def flip_a_bit_of_latest_number(store: AtomStore, guid: str, number: int, needle: bytes) -> None:
    key = guid.encode() + b"/" + number.to_bytes(8, "big")
    with store._env.env.begin(write=True, db=store._env.checkpoints) as txn:
        record = bytearray(txn.get(key))
        record[bytes(record).index(needle) + len(needle) // 2] ^= 0x10
        txn.put(key, bytes(record))
