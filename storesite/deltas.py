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

from hermesx.core.delta import compose, decode_delta, shape_after
from hermesx.core.errors import CheckpointDamagedError, StorageError
from hermesx.core.identity import TAD
from hermesx.core.snapshot import Shape, encode_state, snapshot_checksum, snapshot_shape
from storesite.records import Provenance
from storesite.store import AtomStore

__all__ = ["DeltaOutcome", "put_delta"]

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
    base = store.delta_base(guid, tad, base_seq, base_checksum)
    if not isinstance(base, str) and base.link is not None and base.link.due_whole():
        try:
            state = compose(store.composed(guid, base.number), decode_delta(delta_bytes))
        except CheckpointDamagedError as exc:
            base = f"the chain of the latest checkpoint is damaged: {exc}"
        else:
            snapshot = encode_state(state)
            store.check_size(guid, snapshot)
            checksum = snapshot_checksum(snapshot)
            stored = store.store_checkpoint(
                guid, tad, seq, snapshot, checksum, check, base_no=base.number
            )
            return _outcome(store, stored, checksum, base.name)
    after: Shape | None = None
    if not isinstance(base, str):
        shape = base.link.shape if base.link is not None else snapshot_shape(base.data)
        try:
            after = shape_after(shape, decode_delta(delta_bytes))
        except StorageError as exc:
            # The latest record's shape is not what the node's base was (its link,
            # which no CRC covers, is damaged): the whole state settles it.
            base = f"it does not fit the latest checkpoint: {exc}"
    if isinstance(base, str) or after is None:
        reason = f"{what} refused: {base}; send the whole state"
        log.info("storesite %s: %s", store.sid, reason)
        return DeltaOutcome(stored=False, refused=reason)
    link = base.next_link(delta_bytes, after)
    stored = store.store_checkpoint(
        guid, tad, seq, delta_bytes, delta_checksum, check, base_no=base.number, link=link
    )
    return _outcome(store, stored, link.name, base.name)


def _outcome(store: AtomStore, stored: bool, name: int, base_name: int) -> DeltaOutcome:
    """A delta's outcome: the new checkpoint's name when stored, else the base's."""
    if stored:
        store.deltas_written += 1
    return DeltaOutcome(stored=stored, checksum=name if stored else base_name)
