"""A chain's cut composed from the chain kept in memory (docs/DESIGN.md §6, storesite.chains).

What a caller would notice if it went wrong: a cut writing another state
than the chain's records compose to (a wrong atom state restored later), a
kept chain used after the store moved on without it (a whole checkpoint
between), or the memory it keeps growing without bound.
"""

from __future__ import annotations

import pathlib

import pytest
from test_checkpoint_batch import _delta_request, _register, _Site
from test_checkpoint_chain import _delta, _first_state

from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import AtomState, encode_state, snapshot_checksum
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.storesite_client import CHECKPOINT_DELTA
from storesite.batches import put_batch
from storesite.chains import ITEM_COST, ChainMemory
from storesite.deltas import put_delta
from storesite.records import Provenance
from storesite.store import AtomStore

SID = "s1"
TAD1 = TAD("n1", 1)
CHAIN = 4  # deltas on one anchor before a cut, in these tests


@pytest.fixture(autouse=True)
def _short_chains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("storesite.chain.MAX_CHAIN", CHAIN)


def _registered(store: AtomStore, guid: str) -> int:
    """``guid`` registered with its first state; that checkpoint's name."""
    snapshot = encode_state(_first_state(guid))
    checksum = snapshot_checksum(snapshot)
    meta = pb.AtomMeta(name="a", module_hash="ab" * 32)
    store.register_atom(guid, meta, TAD1, snapshot, Provenance(checksum=checksum, generation=0))
    return checksum


def _put(store: AtomStore, guid: str, seq: int, generation: int, base: int) -> int:
    data = _delta(guid, generation)
    check = Provenance(checksum=snapshot_checksum(data), generation=generation)
    outcome = put_delta(store, guid, TAD1, seq, data, check, seq - 1, base)
    assert outcome.stored, outcome.refused
    return outcome.checksum


def test_a_cut_from_the_kept_chain_writes_what_reading_the_chain_back_would(
    tmp_path: pathlib.Path,
) -> None:
    guid = str(GUID.new(SID))
    with (
        AtomStore(SID, tmp_path / "kept", init=True) as kept,
        AtomStore(SID, tmp_path / "read", init=True) as read,
    ):
        read.chains = ChainMemory(budget=0)  # keeps nothing: every cut reads its chain
        names = [_registered(kept, guid), _registered(read, guid)]
        for seq in range(1, 4 * (CHAIN + 1) + 2):
            names = [_put(s, guid, seq, seq, n) for s, n in zip((kept, read), names, strict=True)]
            assert names[0] == names[1]
            assert kept.latest_checkpoint(guid).snapshot == read.latest_checkpoint(guid).snapshot
        # The first cut read its chain back; the ones after it composed from memory.
        assert kept.chains.cuts_from_memory == 3 and read.chains.cuts_from_memory == 0


def test_a_whole_checkpoint_between_leaves_the_kept_chain_unused(tmp_path: pathlib.Path) -> None:
    guid = str(GUID.new(SID))
    with AtomStore(SID, tmp_path / "data", init=True) as store:
        name = _registered(store, guid)
        seq = 0
        for _ in range(CHAIN + 1):  # up to the first cut: the chain is kept from there
            seq += 1
            name = _put(store, guid, seq, seq, name)
        assert store.chains.held > 0
        # The node sends its whole state (a refused delta, say): a chain of its own.
        seq += 1
        snapshot = store.latest_checkpoint(guid).snapshot
        check = Provenance(checksum=snapshot_checksum(snapshot), generation=seq - 1)
        assert store.put_checkpoint(guid, TAD1, seq, snapshot, check)
        name = check.checksum
        for _ in range(CHAIN + 1):
            seq += 1
            name = _put(store, guid, seq, seq - 1, name)
        # That cut read the chain on the whole checkpoint back; the next one is kept.
        assert store.chains.cuts_from_memory == 0
        for _ in range(CHAIN + 1):
            seq += 1
            name = _put(store, guid, seq, seq - 1, name)
        assert store.chains.cuts_from_memory == 1
        state = store.latest_checkpoint(guid)
        assert state.seq == seq and state.checksum == snapshot_checksum(state.snapshot)


def test_deltas_stored_by_a_batch_grow_the_kept_chain(tmp_path: pathlib.Path) -> None:
    with AtomStore(SID, tmp_path / "data", init=True) as store:
        site = _Site(store)
        guid = _register(store)
        name = store.latest_checkpoint(guid).checksum
        for seq in range(1, 3 * (CHAIN + 1) + 1):
            body = _delta_request(guid, seq, (seq - 1, name), seq)
            outcome = put_batch(site, [(CHECKPOINT_DELTA, body)])  # type: ignore[arg-type]
            assert isinstance(outcome[0], bytes)
            ack = pb.CheckpointAck.FromString(outcome[0])
            assert ack.stored, ack.refused
            name = ack.checksum
        assert store.chains.cuts_from_memory == 2
        latest = store.latest_checkpoint(guid)
        assert latest.seq == 3 * (CHAIN + 1)
        assert latest.checksum == snapshot_checksum(latest.snapshot)


def test_the_chains_kept_stay_within_their_budget(tmp_path: pathlib.Path) -> None:
    with AtomStore(SID, tmp_path / "data", init=True) as store:
        guids = [str(GUID.new(SID)) for _ in range(6)]
        names = {g: _registered(store, g) for g in guids}
        budget = 4 * 3 * 2 * 4096  # a quarter holds about one small chain, not two
        store.chains = ChainMemory(budget=budget)
        for seq in range(1, 3 * (CHAIN + 1) + 1):
            for guid in guids:
                names[guid] = _put(store, guid, seq, seq, names[guid])
                assert store.chains.held <= budget
        assert store.chains.held > 0
        # Dropped chains cost only their cuts' reading back; every state is whole.
        for guid in guids:
            latest = store.latest_checkpoint(guid)
            assert latest.checksum == snapshot_checksum(latest.snapshot)


def test_a_state_of_many_small_items_is_counted_by_its_items_not_its_bytes() -> None:
    # 20,000 one-byte KV entries: ~100 KB encoded, several MB of Python objects.
    kv = {i.to_bytes(3, "big"): b"v" for i in range(20_000)}
    guid = "s1:" + "0" * 32
    state = AtomState(module_hash="ab" * 32, guid=guid, memory_size=0, memory=(), globals=(), kv=kv)
    snapshot = encode_state(state)
    chains = ChainMemory(budget=64 * 2**20)
    chains.cut(state.guid, 1, snapshot_checksum(snapshot), state, len(snapshot))
    assert chains.held >= len(kv) * ITEM_COST > 10 * len(snapshot)
    # A budget whose quarter the items exceed keeps nothing of it.
    small = ChainMemory(budget=4 * len(kv) * ITEM_COST)
    small.cut(state.guid, 1, snapshot_checksum(snapshot), state, len(snapshot))
    assert small.held == 0


def test_a_home_moved_away_leaves_no_chain_kept(tmp_path: pathlib.Path) -> None:
    # Its records are gone: the chain kept for them would only take memory (and, were
    # the atom to come back with slots numbered again, stand beside records it is not).
    guid = str(GUID.new(SID))
    with AtomStore(SID, tmp_path / "data", init=True) as store:
        name = _registered(store, guid)
        for seq in range(1, CHAIN + 2):  # up to the first cut: the chain is kept from there
            name = _put(store, guid, seq, seq, name)
        assert store.chains.held > 0
        store.moves.set_forwarded(guid, "s2")
        assert store.chains.held == 0
