"""Group commit and incremental checkpoints at the storesite (docs/DESIGN.md §6)."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Callable, Iterator

import lmdb
import pytest

from hermesx.core.delta import StateDelta, encode_delta
from hermesx.core.errors import MigrationError, StorageError
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import CHUNK, AtomState, decode_state, encode_state, snapshot_checksum
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.testing.wait import wait_until
from storesite import committer
from storesite.deltas import put_delta
from storesite.records import Provenance
from storesite.store import AtomStore

SID = "s1"


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[AtomStore]:
    with AtomStore(SID, tmp_path / "data", init=True) as s:
        yield s


def _state(guid: str, fill: int = 1, generation: int = 0) -> AtomState:
    memory = bytes([fill]) * CHUNK + bytes(CHUNK) + b"\x02" * CHUNK + bytes(CHUNK)
    return AtomState(
        module_hash="ab" * 32,
        guid=guid,
        memory_size=len(memory),
        memory=((0, memory[:CHUNK]), (2 * CHUNK, memory[2 * CHUNK : 3 * CHUNK])),
        globals=(("g", "i32", 1),),
        kv={b"k": b"v"},
        generation=generation,
    )


def _register(store: AtomStore, state: AtomState | None = None) -> str:
    guid = str(GUID.new(SID))
    snapshot = encode_state(state or _state(guid))
    store.register_atom(
        guid,
        pb.AtomMeta(name="a", module_hash="ab" * 32),
        TAD("n1", 1),
        snapshot,
        Provenance(checksum=snapshot_checksum(snapshot), generation=0),
    )
    return guid


def _checked(snapshot: bytes, generation: int) -> Provenance:
    return Provenance(checksum=snapshot_checksum(snapshot), generation=generation)


def _held_batch(store: AtomStore) -> tuple[threading.Event, threading.Thread]:
    """Hold the committer inside a write of its own, so what comes next queues up
    and is committed together once the event is set."""
    release = threading.Event()
    guid = _register(store)

    def hold(_txn: lmdb.Transaction) -> None:
        release.wait(10)

    holder = threading.Thread(target=store.committer.submit, args=(guid, hold))
    holder.start()
    wait_until(lambda: not store.committer._queue, timeout=5, what="committer took the hold")
    return release, holder


class _InThreads:
    """Each call in a thread of its own; :meth:`outcomes` joins them."""

    def __init__(self, calls: list[Callable[[], object]]) -> None:
        self._outcomes: list[object] = [None] * len(calls)
        self._threads = [
            threading.Thread(target=self._run, args=(i, call)) for i, call in enumerate(calls)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, index: int, call: Callable[[], object]) -> None:
        try:
            self._outcomes[index] = call()
        except Exception as exc:
            self._outcomes[index] = exc

    def running(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def outcomes(self) -> list[object]:
        for thread in self._threads:
            thread.join(10)
        return self._outcomes


def test_checkpoints_arriving_together_share_one_commit(store: AtomStore) -> None:
    guids = [_register(store) for _ in range(7)]
    snapshots = {g: encode_state(_state(g, fill=5, generation=1)) for g in guids}
    release, holder = _held_batch(store)
    commits = store.committer.commits
    started = _InThreads(
        [
            (
                lambda g=g: store.put_checkpoint(
                    g, TAD("n1", 1), 1, snapshots[g], _checked(snapshots[g], 1)
                )
            )
            for g in guids
        ]
    )
    wait_until(lambda: len(store.committer._queue) == 7, timeout=10, what="all 7 queued")
    # None is answered before the commit that holds it.
    assert started.running() == 7
    assert all(store.get(g).checkpoint_no == 1 for g in guids)
    release.set()
    holder.join(10)
    assert started.outcomes() == [True] * 7
    # The hold's commit, then one for all seven.
    assert store.committer.commits == commits + 2
    for guid in guids:
        assert store.latest_checkpoint(guid).snapshot == snapshots[guid]
    assert store.status().checkpoints_written >= 7


def test_a_sender_says_so_before_it_waits_for_another_batch(store: AtomStore) -> None:
    # A sender may be the thread reading its connection: before it waits for
    # another's batch, it must hand the reading on (a lone leader need not).
    guid = _register(store)
    blocked: list[str] = []
    store.committer.waiting = lambda: blocked.append(threading.current_thread().name)
    snapshot = encode_state(_state(guid, fill=5, generation=1))
    assert store.put_checkpoint(guid, TAD("n1", 1), 1, snapshot, _checked(snapshot, 1))
    assert blocked == []
    release, holder = _held_batch(store)  # a leader inside its batch, not yet syncing
    snapshot = encode_state(_state(guid, fill=6, generation=2))
    follower = threading.Thread(
        target=store.put_checkpoint,
        args=(guid, TAD("n1", 1), 2, snapshot, _checked(snapshot, 2)),
        name="follower",
    )
    follower.start()
    wait_until(lambda: "follower" in blocked, timeout=5, what="the follower's notice")
    assert follower.is_alive()  # it said so before it waited, not after
    release.set()
    holder.join(10)
    follower.join(10)
    assert store.latest_checkpoint(guid).snapshot == snapshot
    assert blocked == ["follower"]


def test_many_senders_each_get_their_own_outcome_and_none_is_left_waiting(
    store: AtomStore,
) -> None:
    guids = [_register(store) for _ in range(12)]
    key = b"test-outcome"

    def sender(guid: str) -> list[object]:
        outcomes: list[object] = []
        for n in range(25):

            def write(txn: lmdb.Transaction, n: int = n) -> str:
                if n % 7 == 3:
                    raise MigrationError(f"{guid} refused {n}")
                txn.put(key + guid.encode(), b"%d" % n)
                return f"{guid}:{n}"

            try:
                outcomes.append(store.committer.submit(guid, write))
            except MigrationError as exc:
                outcomes.append(str(exc))
        return outcomes

    commits, written = store.committer.commits, store.committer.written
    senders = _InThreads([lambda guid=guid: sender(guid) for guid in guids])
    results = senders.outcomes()
    assert senders.running() == 0
    for guid, outcome in zip(guids, results, strict=True):
        assert outcome == [
            f"{guid} refused {n}" if n % 7 == 3 else f"{guid}:{n}" for n in range(25)
        ]
    refused = sum(1 for n in range(25) if n % 7 == 3)
    assert store.committer.written - written == 12 * (25 - refused)
    assert store.committer.commits - commits <= 12 * 25


def test_a_refused_checkpoint_in_a_batch_refuses_that_one_only(store: AtomStore) -> None:
    good, stale = _register(store), _register(store)
    snapshot = encode_state(_state(good, fill=9, generation=1))
    release, holder = _held_batch(store)
    started = _InThreads(
        [
            lambda: store.put_checkpoint(good, TAD("n1", 1), 1, snapshot, _checked(snapshot, 1)),
            # From a location the atom never had: fencing refuses it.
            lambda: store.put_checkpoint(stale, TAD("n9", 1), 1, snapshot, _checked(snapshot, 1)),
        ]
    )
    wait_until(lambda: len(store.committer._queue) == 2, timeout=10, what="both queued")
    release.set()
    holder.join(10)
    stored, refused = started.outcomes()
    assert stored is True
    assert isinstance(refused, MigrationError) and "does not match its location" in str(refused)
    assert store.latest_checkpoint(good).snapshot == snapshot
    assert store.get(stale).checkpoint_no == 1


def test_a_lone_refused_checkpoint_changes_nothing_and_the_next_is_stored(
    store: AtomStore,
) -> None:
    # A batch of one is written without a nested transaction: its refusal must undo
    # all it wrote before the check that refused it, and leave the committer usable.
    guid = _register(store)
    snapshot = encode_state(_state(guid, fill=4, generation=1))
    commits = store.committer.commits

    def half_written(txn: lmdb.Transaction) -> None:
        txn.put(b"stray", b"x", db=store._env.checkpoints)
        raise MigrationError("refused after a write")

    with pytest.raises(MigrationError, match="refused after a write"):
        store.committer.submit(guid, half_written)
    with pytest.raises(MigrationError, match="does not match its location"):
        store.put_checkpoint(guid, TAD("n9", 1), 1, snapshot, _checked(snapshot, 1))
    assert store.committer.commits == commits  # nothing to commit, no sync
    with store._env.env.begin() as txn:
        assert txn.get(b"stray", db=store._env.checkpoints) is None
    assert store.put_checkpoint(guid, TAD("n1", 1), 1, snapshot, _checked(snapshot, 1))
    assert store.latest_checkpoint(guid).snapshot == snapshot
    assert store.committer.commits == commits + 1


def test_a_lone_checkpoint_failing_inside_lmdb_keeps_nothing_and_the_next_is_stored(
    store: AtomStore,
) -> None:
    # Written without a nested transaction, a lone write that LMDB fails halfway (a full
    # map) must leave nothing of what it wrote, fail as a StorageError, and not hold the
    # write lock: the next checkpoint is stored.
    guid = _register(store)
    snapshot = encode_state(_state(guid, fill=5, generation=1))

    def full_halfway(txn: lmdb.Transaction) -> None:
        txn.put(b"stray", b"x", db=store._env.checkpoints)
        raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL")

    with pytest.raises(StorageError, match="commit of 1 checkpoints written together failed"):
        store.committer.submit(guid, full_halfway)
    with store._env.env.begin() as txn:
        assert txn.get(b"stray", db=store._env.checkpoints) is None
    assert store.put_checkpoint(guid, TAD("n1", 1), 1, snapshot, _checked(snapshot, 1))
    assert store.latest_checkpoint(guid).snapshot == snapshot


def test_a_failed_commit_fails_every_checkpoint_of_its_batch(store: AtomStore) -> None:
    guid = _register(store)
    snapshot = encode_state(_state(guid, fill=3, generation=1))
    release, holder = _held_batch(store)

    def broken(_txn: lmdb.Transaction) -> None:
        raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL")

    started = _InThreads(
        [
            lambda: store.put_checkpoint(guid, TAD("n1", 1), 1, snapshot, _checked(snapshot, 1)),
            lambda: store.committer.submit(guid, broken),
        ]
    )
    wait_until(lambda: len(store.committer._queue) == 2, timeout=10, what="both queued")
    release.set()
    holder.join(10)
    for outcome in started.outcomes():
        assert isinstance(outcome, StorageError)
        assert "commit of 2 checkpoints written together failed" in str(outcome)
    # Nothing of the batch was kept.
    assert store.get(guid).checkpoint_no == 1


def test_a_commit_failed_by_a_full_disk_says_the_disk_is_full(
    store: AtomStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LMDB reports a short write as "Input/output error": the sender must learn why.
    guid = _register(store)

    def short_write(_txn: lmdb.Transaction) -> None:
        raise lmdb.Error("mdb_txn_commit: Input/output error")

    class Full:
        f_bavail, f_frsize = 3, 4096

    with monkeypatch.context() as patched:
        patched.setattr(committer.os, "statvfs", lambda _path: Full())
        with pytest.raises(StorageError, match=r"the disk holding .* is full \(12288 bytes free\)"):
            store.committer.submit(guid, short_write)
    # With room on the disk, the error is LMDB's own.
    with pytest.raises(StorageError) as room:
        store.committer.submit(guid, short_write)
    assert "Input/output error" in str(room.value) and "full" not in str(room.value)


def _delta(guid: str, fill: int, generation: int) -> bytes:
    rest = AtomState(
        module_hash="ab" * 32,
        guid=guid,
        memory_size=0,
        memory=(),
        globals=(("g", "i32", 2),),
        generation=generation,
    )
    delta = StateDelta(
        memory_size=4 * CHUNK,
        chunks=((CHUNK, bytes([fill]) * CHUNK),),
        kv_put=((b"n", b"new"),),
        kv_delete=(b"k",),
        replies_dropped=0,
        replies_added=(),
        rest=rest,
    )
    return encode_delta(delta)


def test_a_delta_on_the_latest_checkpoint_is_stored_and_read_composed(store: AtomStore) -> None:
    guid = _register(store)
    base = store.latest_checkpoint(guid)
    data = _delta(guid, fill=7, generation=1)
    outcome = put_delta(store, guid, TAD("n1", 1), 1, data, _checked(data, 1), 0, base.checksum)
    assert outcome.stored and not outcome.refused
    latest = store.latest_checkpoint(guid)
    assert latest.seq == 1 and latest.generation == 1
    # The reader gets a whole snapshot with its own CRC; the node's next base is the
    # delta checkpoint's name, which a delta on it must give.
    assert latest.checksum == snapshot_checksum(latest.snapshot)
    state = decode_state(latest.snapshot)
    assert state.kv == {b"n": b"new"}
    assert state.globals == (("g", "i32", 2),)
    memory = bytearray(state.memory_size)
    for offset, run in state.memory:
        memory[offset : offset + len(run)] = run
    assert memory[CHUNK : 2 * CHUNK] == b"\x07" * CHUNK
    assert memory[:CHUNK] == b"\x01" * CHUNK
    assert store.status().deltas_written == 1


def test_a_delta_on_a_stale_base_is_refused_and_nothing_is_stored(store: AtomStore) -> None:
    guid = _register(store)
    base = store.latest_checkpoint(guid)
    whole = encode_state(_state(guid, fill=4, generation=1))
    store.put_checkpoint(guid, TAD("n1", 1), 1, whole, _checked(whole, 1))
    data = _delta(guid, fill=7, generation=2)
    # Its base is seq 0, the storesite's latest is seq 1.
    outcome = put_delta(store, guid, TAD("n1", 1), 2, data, _checked(data, 2), 0, base.checksum)
    assert not outcome.stored
    assert "its base (1, 0) is not the latest checkpoint (1, 1)" in outcome.refused
    # A base of the right seq with another checksum is refused too.
    outcome = put_delta(store, guid, TAD("n1", 1), 2, data, _checked(data, 2), 1, 12345)
    assert "checksum 00003039" in outcome.refused
    assert store.latest_checkpoint(guid).snapshot == whole
    # A delta from a stale location is an error, as a whole checkpoint would be.
    with pytest.raises(MigrationError):
        put_delta(store, guid, TAD("n9", 1), 2, data, _checked(data, 2), 1, 0)
    damaged = Provenance(checksum=1, generation=2)
    with pytest.raises(StorageError, match="damaged"):
        put_delta(store, guid, TAD("n1", 1), 2, data, damaged, 1, 0)
