"""Incremental checkpoints at the storesite: a delta composed onto the latest one.

See docs/DESIGN.md §6 ("Incremental checkpoints").

A node sends only what changed since its last acknowledged checkpoint (a
:class:`~hermesx.core.delta.StateDelta`), naming that checkpoint as its base
by ``(age, seq)`` and name (its CRC-32, :mod:`storesite.chain`).
:func:`put_delta` checks the delta's own checksum, refuses it (an answer, not
an error: the node sends its whole state then) when the base is not this
storesite's latest checkpoint or that one is damaged, checks that the delta
fits the base's state (its shape: memory size, reply count, GUID, module) and
writes it as it came, a delta record on the base, like any checkpoint: in the
next group commit, with every check of a whole one, and only while the base
is still the latest. When the base's chain is long it composes the new whole
snapshot and writes that instead. Readers compose delta records, so reading,
restoring, moving and moving home never see a delta.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hermesx.core.delta import StateDelta, compose, decode_delta
from hermesx.core.errors import CheckpointDamagedError, StorageError
from hermesx.core.identity import TAD
from hermesx.core.snapshot import AtomState, encode_state, snapshot_checksum
from storesite.chain import Record
from storesite.records import Provenance
from storesite.store import AtomStore

__all__ = ["DeltaOutcome", "decoded", "put_delta"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeltaOutcome:
    """What became of a delta: stored (or not newer), the latest snapshot's checksum,
    or why its base was refused."""

    stored: bool
    checksum: int = 0
    refused: str = ""


def put_delta(
    store: AtomStore,
    guid: str,
    tad: TAD,
    seq: int,
    delta_bytes: bytes,
    check: Provenance,
    base_seq: int,
    base_checksum: int,
) -> DeltaOutcome:
    """Compose and store a delta checkpoint (see the module docstring). The caller holds
    the atom's lock, so the latest checkpoint read here stays the latest until written."""
    what = f"checkpoint delta of atom {guid} from {tad} seq {seq}"
    delta_checksum = store.arriving(guid, delta_bytes, check, what)
    base: Record | str = ""
    try:
        delta: StateDelta | None = decoded(store, delta_bytes)
    except StorageError as exc:
        delta, base = None, f"it does not fit the latest checkpoint: {exc}"
    if delta is not None:
        # The base is checked in the group's transaction that writes the delta.
        written = store.store_delta(
            guid, tad, seq, delta_bytes, delta, delta_checksum, check, (base_seq, base_checksum)
        )
        if isinstance(written, tuple):
            if written[0]:
                store.chains.stored(guid, base_checksum, written[1], delta_bytes, delta)
            return _outcome(store, *written)
        base = written
    if delta is not None and not isinstance(base, str):
        # The chain is long: the new whole snapshot instead, composed from the chain
        # kept in memory when there is one (storesite.chains), else read back.
        try:
            state = _cut(store, guid, base, delta)
        except CheckpointDamagedError as exc:
            base = f"the chain of the latest checkpoint is damaged: {exc}"
        else:
            snapshot = encode_state(state)
            store.check_size(guid, snapshot)
            checksum = snapshot_checksum(snapshot)
            stored = store.store_checkpoint(
                guid, tad, seq, snapshot, checksum, check, base_no=base.number
            )
            if stored:
                store.chains.cut(guid, base.number + 1, checksum, state, len(snapshot))
            return _outcome(store, stored, checksum if stored else base.name)
    reason = f"{what} refused: {base}; send the whole state"
    log.info("storesite %s: %s", store.sid, reason)
    return DeltaOutcome(stored=False, refused=reason)


def _cut(store: AtomStore, guid: str, base: Record, delta: StateDelta) -> AtomState:
    """The state ``delta`` makes of the latest checkpoint ``base``, whose chain is due a
    whole snapshot."""
    kept = None if base.link is None else store.chains.composed(guid, base.link, delta)
    return kept if kept is not None else compose(store.composed(guid, base.number), delta)


def decoded(store: AtomStore, data: bytes) -> StateDelta:
    """The delta ``data`` as every transport's request has it read (gRPC, the call
    channel's lone and batched requests): StorageError, before any chunk is inflated, when
    its chunks are out of place or would decode to more than a whole checkpoint may hold
    here (docs/DESIGN.md §6 "Incremental checkpoints")."""
    return decode_delta(data, store.max_checkpoint_bytes)


def _outcome(store: AtomStore, stored: bool, name: int) -> DeltaOutcome:
    """A delta's outcome: stored or not, and the latest checkpoint's name then."""
    if stored:
        store.deltas_written += 1
    return DeltaOutcome(stored=stored, checksum=name)
