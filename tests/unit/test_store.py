"""The storesite's LMDB records: checkpoints, moves, passivation, restarts.

See docs/DESIGN.md §5, §6.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import msgpack
import pytest

from hermesx.core.errors import MigrationError, NameNotFoundError, StorageError
from hermesx.core.identity import GUID, TAD
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.testing.reaper import tethered
from storesite.modules import module_hash
from storesite.records import KEEP_PREVIOUS_CHECKPOINTS, AtomState, Provenance
from storesite.store import AtomStore

SID = "s1"


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[AtomStore]:
    with AtomStore(SID, tmp_path / "data", init=True, max_checkpoint_bytes=1 << 20) as s:
        yield s


def new_atom(store: AtomStore, node: str = "n1", age: int = 1) -> str:
    guid = str(GUID.new(SID))
    meta = pb.AtomMeta(name="counter", module_hash="ab" * 32, tags=["gpu"])
    store.register_atom(guid, meta, TAD(node, age), b"snap-0")
    return guid


def test_register_keeps_meta_location_and_first_checkpoint(store: AtomStore) -> None:
    guid = new_atom(store)
    state = store.get(guid)
    assert state.location == TAD("n1", 1)
    assert state.meta.name == "counter"
    assert list(state.meta.tags) == ["gpu"]
    assert not state.dormant
    ck = store.latest_checkpoint(guid)
    assert (ck.snapshot, ck.tad, ck.seq) == (b"snap-0", TAD("n1", 1), 0)


def test_register_refuses_duplicates_and_foreign_guids(store: AtomStore) -> None:
    guid = new_atom(store)
    with pytest.raises(StorageError, match="already registered"):
        store.register_atom(guid, pb.AtomMeta(), TAD("n1", 1), b"")
    foreign = str(GUID.new("other"))
    with pytest.raises(StorageError, match="homed at storesite other"):
        store.register_atom(foreign, pb.AtomMeta(), TAD("n1", 1), b"")


def test_modules_are_stored_by_verified_hash(store: AtomStore) -> None:
    digest = store.modules.put(b"\0asm-module")
    assert digest == module_hash(b"\0asm-module")
    assert store.modules.get(digest) == b"\0asm-module"
    assert store.modules.put(b"\0asm-module") == digest  # idempotent
    with pytest.raises(StorageError, match="hash to"):
        store.modules.put(b"other", expected_hash=digest)
    with pytest.raises(NameNotFoundError, match="no module"):
        store.modules.get("00" * 32)


def test_keeps_latest_checkpoint_and_three_previous(store: AtomStore) -> None:
    guid = new_atom(store)
    for seq in range(1, 8):
        assert store.put_checkpoint(guid, TAD("n1", 1), seq, f"snap-{seq}".encode())
    history = store.checkpoint_history(guid)
    assert [c.seq for c in history] == [4, 5, 6, 7]
    assert len(history) == KEEP_PREVIOUS_CHECKPOINTS + 1
    assert store.latest_checkpoint(guid).snapshot == b"snap-7"
    assert store.get(guid).checkpoints == 4
    assert store.status().checkpoints == 4


def test_older_or_repeated_seq_is_ignored(store: AtomStore) -> None:
    guid = new_atom(store)
    assert store.put_checkpoint(guid, TAD("n1", 1), 5, b"five")
    assert not store.put_checkpoint(guid, TAD("n1", 1), 3, b"three")
    assert not store.put_checkpoint(guid, TAD("n1", 1), 5, b"five-again")
    assert store.latest_checkpoint(guid).snapshot == b"five"


def test_checkpoint_from_old_location_is_refused(store: AtomStore) -> None:
    guid = new_atom(store)
    age = store.moves.prepare(guid, TAD("n1", 1), "n2")
    store.moves.commit(guid, TAD("n2", age), b"moved")
    with pytest.raises(MigrationError, match="stale checkpoint"):
        store.put_checkpoint(guid, TAD("n1", 1), 99, b"old node")
    assert store.latest_checkpoint(guid).snapshot == b"moved"
    # The new location counts seq afresh within its age.
    assert store.put_checkpoint(guid, TAD("n2", age), 1, b"new node")
    assert store.latest_checkpoint(guid).snapshot == b"new node"


def test_oversize_checkpoint_is_refused_naming_atom_and_sizes(store: AtomStore) -> None:
    guid = new_atom(store)
    with pytest.raises(StorageError) as info:
        store.put_checkpoint(guid, TAD("n1", 1), 1, b"x" * ((1 << 20) + 1))
    assert guid in str(info.value)
    assert str((1 << 20) + 1) in str(info.value)
    assert str(1 << 20) in str(info.value)
    assert store.latest_checkpoint(guid).snapshot == b"snap-0"


def test_unknown_guid_is_not_found_naming_it(store: AtomStore) -> None:
    guid = str(GUID.new(SID))
    for call in (
        lambda: store.get(guid),
        lambda: store.latest_checkpoint(guid),
        lambda: store.put_checkpoint(guid, TAD("n1", 1), 1, b""),
        lambda: store.moves.prepare(guid, TAD("n1", 1), "n2"),
    ):
        with pytest.raises(NameNotFoundError, match=guid):
            call()


def test_prepare_commit_moves_location_and_checkpoint(store: AtomStore) -> None:
    guid = new_atom(store)
    age = store.moves.prepare(guid, TAD("n1", 1), "n2")
    assert age == 2
    assert store.get(guid).pending == TAD("n2", 2)
    state = store.moves.commit(guid, TAD("n2", 2), b"at n2")
    assert state.location == TAD("n2", 2)
    assert state.pending is None
    ck = store.latest_checkpoint(guid)
    assert (ck.tad, ck.snapshot) == (TAD("n2", 2), b"at n2")


def test_a_staged_snapshot_becomes_the_checkpoint_only_at_commit(store: AtomStore) -> None:
    guid = new_atom(store)
    before = store.latest_checkpoint(guid).snapshot
    age = store.moves.prepare(guid, TAD("n1", 1), "n2")
    store.moves.stage(guid, TAD("n2", age), b"staged state")
    # Until COMMIT the old checkpoint is the latest, and the staged one is not listed.
    assert store.latest_checkpoint(guid).snapshot == before
    assert all(ck.snapshot != b"staged state" for ck in store.checkpoint_history(guid))
    # Nothing else may write checkpoints of a moving atom.
    with pytest.raises(MigrationError, match="moving to n2"):
        store.put_checkpoint(guid, TAD("n1", 1), 99, b"late")
    store.moves.commit(guid, TAD("n2", age), b"")
    latest = store.latest_checkpoint(guid)
    assert (latest.tad, latest.snapshot) == (TAD("n2", age), b"staged state")
    assert store.get(guid).location == TAD("n2", age)


def test_commit_without_a_staged_snapshot_is_refused(store: AtomStore) -> None:
    guid = new_atom(store)
    age = store.moves.prepare(guid, TAD("n1", 1), "n2")
    with pytest.raises(MigrationError, match="no snapshot was staged"):
        store.moves.commit(guid, TAD("n2", age), b"")
    assert store.get(guid).location == TAD("n1", 1)


def test_an_aborted_stage_never_becomes_a_checkpoint(store: AtomStore) -> None:
    guid = new_atom(store)
    age = store.moves.prepare(guid, TAD("n1", 1), "n2")
    store.moves.stage(guid, TAD("n2", age), b"abandoned")
    store.moves.abort(guid, age)
    store.put_checkpoint(guid, TAD("n1", 1), 5, b"kept")
    assert store.latest_checkpoint(guid).snapshot == b"kept"
    assert all(ck.snapshot != b"abandoned" for ck in store.checkpoint_history(guid))


def test_concurrent_prepare_is_refused(store: AtomStore) -> None:
    guid = new_atom(store)
    store.moves.prepare(guid, TAD("n1", 1), "n2")
    with pytest.raises(MigrationError, match="already moving to n2"):
        store.moves.prepare(guid, TAD("n1", 1), "n3")


def test_stale_source_is_refused(store: AtomStore) -> None:
    guid = new_atom(store)
    age = store.moves.prepare(guid, TAD("n1", 1), "n2")
    store.moves.commit(guid, TAD("n2", age), b"moved")
    with pytest.raises(MigrationError, match="stale move"):
        store.moves.prepare(guid, TAD("n1", 1), "n3")


def test_abort_keeps_location_and_ages_never_go_back(store: AtomStore) -> None:
    guid = new_atom(store)
    first = store.moves.prepare(guid, TAD("n1", 1), "n2")
    assert store.moves.abort(guid, first)
    state = store.get(guid)
    assert state.location == TAD("n1", 1)
    assert state.pending is None
    assert store.latest_checkpoint(guid).snapshot == b"snap-0"
    second = store.moves.prepare(guid, TAD("n1", 1), "n2")
    assert second > first
    # A commit for the aborted attempt cannot land.
    with pytest.raises(MigrationError, match="does not match"):
        store.moves.commit(guid, TAD("n2", first), b"moved")
    assert not store.moves.abort(guid, first)  # stale abort leaves the live attempt alone
    assert store.get(guid).pending == TAD("n2", second)


def test_commit_without_prepare_is_refused(store: AtomStore) -> None:
    guid = new_atom(store)
    with pytest.raises(MigrationError, match="no move"):
        store.moves.commit(guid, TAD("n2", 2), b"moved")


def test_passivate_marks_dormant_and_activation_uses_next_age(store: AtomStore) -> None:
    guid = new_atom(store)
    store.put_checkpoint(guid, TAD("n1", 1), 1, b"one")
    store.passivated(guid, TAD("n1", 1), b"final")
    state = store.get(guid)
    assert state.dormant
    assert state.location == TAD("n1", 1)
    assert store.latest_checkpoint(guid).snapshot == b"final"
    with pytest.raises(MigrationError, match="dormant"):
        store.moves.prepare(guid, TAD("n1", 1), "n2")
    age, ck = store.reserve_age(guid)
    assert age == 2
    assert ck.snapshot == b"final"
    state = store.activated(guid, TAD("n3", age))
    assert (state.location, state.dormant) == (TAD("n3", 2), False)


def test_passivation_from_stale_location_is_refused(store: AtomStore) -> None:
    guid = new_atom(store)
    age = store.moves.prepare(guid, TAD("n1", 1), "n2")
    store.moves.commit(guid, TAD("n2", age), b"moved")
    with pytest.raises(MigrationError, match="stale passivation"):
        store.passivated(guid, TAD("n1", 1), b"old")
    assert not store.get(guid).dormant


def test_recovery_activation_clears_pending_move(store: AtomStore) -> None:
    guid = new_atom(store)
    store.moves.prepare(guid, TAD("n1", 1), "n2")
    age, _ = store.reserve_age(guid)
    store.activated(guid, TAD("n3", age))
    state = store.get(guid)
    assert state.pending is None
    assert state.location == TAD("n3", 3)


def test_forget_deletes_every_record(store: AtomStore) -> None:
    guid = new_atom(store)
    store.put_checkpoint(guid, TAD("n1", 1), 1, b"x")
    store.forget(guid)
    with pytest.raises(NameNotFoundError):
        store.get(guid)
    assert store.status().checkpoints == 0
    assert store.status().atoms == 0


def test_restart_loses_nothing(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    with AtomStore(SID, data, init=True) as store:
        guid = new_atom(store)
        store.put_checkpoint(guid, TAD("n1", 1), 1, b"one")
        digest = store.modules.put(b"module")
        age = store.moves.prepare(guid, TAD("n1", 1), "n2")
    with AtomStore(SID, data) as store:
        state = store.get(guid)
        assert state.pending == TAD("n2", age)
        assert state.location == TAD("n1", 1)
        assert store.latest_checkpoint(guid).snapshot == b"one"
        assert store.modules.get(digest) == b"module"
        store.moves.commit(guid, TAD("n2", age), b"two")
        assert store.moves.prepare(guid, TAD("n2", age), "n1") == age + 1


def test_data_dir_held_by_another_process_is_refused(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    holder = tethered(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import pathlib, sys
                from storesite.store import AtomStore
                store = AtomStore("holder", pathlib.Path({str(data)!r}), init=True)
                print("open", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StorageError) as info:
            AtomStore(SID, data)
        assert f"held by storesite holder (pid {holder.pid})" in str(info.value)
    finally:
        holder.communicate("", timeout=10)
    # Once the holder is gone the dir opens again (for the storesite it belongs to).
    AtomStore("holder", data).close()


def test_data_dir_opened_twice_in_one_process_is_refused(store: AtomStore) -> None:
    with pytest.raises(StorageError, match="held by storesite s1"):
        AtomStore(SID, store.data_dir)


def test_data_dir_with_missing_parent_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        AtomStore(SID, tmp_path / "missing" / "data", init=True)


def test_data_dir_that_is_a_file_is_refused(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a dir")
    with pytest.raises(StorageError, match="not a directory"):
        AtomStore(SID, target)


def test_adopt_accepts_foreign_atom_and_keeps_ages_ahead(store: AtomStore) -> None:
    guid = str(GUID.new("other"))
    state = store.moves.adopt_atom(
        guid, pb.AtomMeta(name="x"), TAD("n1", 7), 3, b"adopted", dormant=True, next_age=9
    )
    assert state.adopted and state.dormant
    age, ck = store.reserve_age(guid)
    assert age == 9
    assert (ck.snapshot, ck.seq) == (b"adopted", 3)
    with pytest.raises(StorageError, match="already homed"):
        store.moves.adopt_atom(guid, pb.AtomMeta(), TAD("n1", 7), 0, b"", dormant=False)


def test_forwarded_atom_refuses_updates(store: AtomStore) -> None:
    guid = new_atom(store)
    store.moves.set_forwarded(guid, "s2")
    assert store.get(guid).forwarded_to == "s2"
    with pytest.raises(StorageError, match="now homed at storesite s2"):
        store.put_checkpoint(guid, TAD("n1", 1), 1, b"")
    assert store.status().checkpoints == 0


def test_a_move_never_committed_expires_and_the_atom_stays(
    store: AtomStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import storesite.records as store_module

    guid = new_atom(store)
    age = store.moves.prepare(guid, TAD("n1", 1), "n2")
    monkeypatch.setattr(store_module, "PENDING_LEASE_S", 0.0)
    # The coordinator went quiet: its checkpoints are taken again, a new move may start.
    assert store.put_checkpoint(guid, TAD("n1", 1), 7, b"after the lease")
    with pytest.raises(MigrationError, match="no move"):
        store.moves.commit(guid, TAD("n2", age), b"late commit")
    assert store.get(guid).location == TAD("n1", 1)
    monkeypatch.setattr(store_module, "PENDING_LEASE_S", 120.0)
    assert store.moves.prepare(guid, TAD("n1", 1), "n3") > age


def test_record_of_an_older_store_loads_with_an_unknown_incarnation(store: AtomStore) -> None:
    guid = new_atom(store)
    raw = msgpack.unpackb(store.get(guid).to_bytes(), raw=False)
    del raw["inc"]  # as written before locations named an incarnation
    state = AtomState.from_bytes(msgpack.packb(raw, use_bin_type=True))
    assert (state.location, state.incarnation) == (TAD("n1", 1), "")


def test_location_names_the_incarnation_of_each_holder(store: AtomStore) -> None:
    guid = str(GUID.new(SID))
    store.register_atom(guid, pb.AtomMeta(), TAD("n1", 1), b"s", Provenance(incarnation="a1"))
    assert store.get(guid).incarnation == "a1"
    age = store.moves.prepare(guid, TAD("n1", 1), "n2")
    moved = store.moves.commit(guid, TAD("n2", age), b"moved", Provenance(incarnation="b1"))
    assert moved.incarnation == "b1"
    next_age, _ = store.reserve_age(guid)
    assert store.activated(guid, TAD("n3", next_age), "c1").incarnation == "c1"
    with pytest.raises(MigrationError, match="stale reconciliation"):
        store.set_incarnation(guid, TAD("n2", age), "b2")
    assert store.set_incarnation(guid, TAD("n3", next_age), "c2").incarnation == "c2"
