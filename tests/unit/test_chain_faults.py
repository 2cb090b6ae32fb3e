"""Delta records under faults the CRC-32 does not see (docs/DESIGN.md §6).

A record's CRC-32 covers its snapshot or delta, not its link (anchor, chain
length, shape), and the window deletes slots by the anchors it learnt from
those links. A flipped bit in a link must never make the window delete a
slot a kept checkpoint composes from: the delta on such a record is refused
(the node then sends its whole state) and every acknowledged call stays
restorable.
"""

from __future__ import annotations

import pathlib
import random
from collections.abc import Iterator

import msgpack
import pytest
from test_checkpoint_chain import SID, TAD1, _assert_holds, _delta, _records, _register

from hermesx.core.delta import compose, decode_delta
from hermesx.core.identity import TAD
from hermesx.core.snapshot import CHUNK, encode_state, snapshot_checksum
from storesite.deltas import put_delta
from storesite.records import Provenance
from storesite.store import AtomStore


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[AtomStore]:
    with AtomStore(SID, tmp_path / "data", init=True) as s:
        yield s


def _put_or_whole(store: AtomStore, guid: str, generation: int, base: int) -> tuple[int, bool]:
    """Generation ``generation`` as a delta on seq ``generation - 1``, or — refused, as
    a node does then — its whole state; the new name, and whether the delta was taken."""
    data = _delta(guid, generation)
    check = Provenance(checksum=snapshot_checksum(data), generation=generation)
    outcome = put_delta(store, guid, TAD1, generation, data, check, generation - 1, base)
    if outcome.stored:
        return outcome.checksum, True
    assert "send the whole state" in outcome.refused
    # The node's whole state: what the delta composes to.
    state = compose(store.composed(guid, store.get(guid).checkpoint_no), decode_delta(data))
    whole = encode_state(state)
    checksum = snapshot_checksum(whole)
    assert store.put_checkpoint(
        guid, TAD1, generation, whole, Provenance(checksum=checksum, generation=generation)
    )
    return checksum, False


def _set_link(store: AtomStore, guid: str, number: int, index: int, value: object) -> None:
    """Overwrite field ``index`` of slot ``number``'s link (its CRC stays right)."""
    env = store._env
    key = guid.encode() + b"/" + number.to_bytes(8, "big")
    with env.env.begin(write=True, db=env.checkpoints) as txn:
        raw = txn.get(key)
        assert raw is not None
        fields = msgpack.unpackb(bytes(raw), raw=False)
        fields[3][index] = value
        txn.put(key, msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize(("index", "value"), [(0, 9), (0, 3), (3, 0)])
def test_a_flipped_link_never_deletes_a_slot_a_kept_checkpoint_needs(
    store: AtomStore, index: int, value: int
) -> None:
    guid, name = _register(store)
    for generation in range(1, 10):
        name, taken = _put_or_whole(store, guid, generation, name)
        assert taken
    # Slot 10 (generation 9) hangs on anchor 1, the 9th delta; its link is changed.
    _set_link(store, guid, 10, index, value)
    refused = 0
    for generation in range(10, 16):
        name, taken = _put_or_whole(store, guid, generation, name)
        refused += not taken
    latest = store.latest_checkpoint(guid)
    _assert_holds(latest.snapshot, 15)
    assert refused == 1  # the delta on the changed record; a whole state then
    assert [c.generation for c in store.checkpoint_history(guid)] == [12, 13, 14, 15]


def test_random_deltas_wholes_cuts_and_moves_never_lose_a_kept_checkpoint(
    store: AtomStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model check of the window: after every step of a random run, every kept
    checkpoint composes and the latest holds the newest generation."""
    monkeypatch.setattr("storesite.chain.MAX_CHAIN", 5)
    rng = random.Random(13)
    guid, name = _register(store)
    tad, seq, generation = TAD1, 0, 0
    for step in range(300):
        op = rng.choice(["delta"] * 6 + ["whole", "abort", "move"])
        if op in ("abort", "move"):
            destination = "n2" if tad.node == "n1" else "n1"
            age = store.moves.prepare(guid, tad, destination)
            moved = store.latest_checkpoint(guid).snapshot
            check = Provenance(checksum=snapshot_checksum(moved), generation=generation)
            store.moves.stage(guid, TAD(destination, age), moved, check)
            if op == "abort":
                store.moves.abort(guid, age)
            else:
                store.moves.commit(guid, TAD(destination, age), b"", Provenance(incarnation="i"))
                tad, seq = TAD(destination, age), 0
                name = store.latest_checkpoint(guid).checksum
        else:
            generation += 1
            data = _delta(guid, generation)
            seq += 1
            check = Provenance(checksum=snapshot_checksum(data), generation=generation)
            outcome = (
                put_delta(store, guid, tad, seq, data, check, seq - 1, name)
                if op == "delta"
                else None
            )
            if outcome is not None:
                assert outcome.stored, outcome.refused
                name = outcome.checksum
            else:
                state = compose(
                    store.composed(guid, store.get(guid).checkpoint_no), decode_delta(data)
                )
                whole = encode_state(state)
                name = snapshot_checksum(whole)
                check = Provenance(checksum=name, generation=generation)
                assert store.put_checkpoint(guid, tad, seq, whole, check)
        history = store.checkpoint_history(guid)
        assert len(history) == min(4, store.get(guid).checkpoint_no), step
        _assert_holds(store.latest_checkpoint(guid).snapshot, generation)
        assert history[-1].generation == generation
        # And nothing else is kept: the slots back to the oldest kept one's anchor, a staged one.
        assert len(_records(store, guid)) <= 4 + 5 + 1, step


def test_a_delta_on_a_record_whose_shape_was_flipped_is_refused_not_failed(
    store: AtomStore,
) -> None:
    guid, name = _register(store)
    for generation in range(1, 4):
        name, _ = _put_or_whole(store, guid, generation, name)
    # Slot 4's link says the memory is twice its size: the next delta no longer fits.
    _set_link(store, guid, 4, 2, [guid, "ab" * 32, 16 * CHUNK, 1])
    data = _delta(guid, 4)
    check = Provenance(checksum=snapshot_checksum(data), generation=4)
    outcome = put_delta(store, guid, TAD1, 4, data, check, 3, name)
    assert not outcome.stored and "does not fit the latest checkpoint" in outcome.refused
    assert "send the whole state" in outcome.refused
    _put_or_whole(store, guid, 4, name)
    _assert_holds(store.latest_checkpoint(guid).snapshot, 4)
