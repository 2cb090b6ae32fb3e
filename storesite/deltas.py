"""Incremental checkpoints at the storesite: a delta composed onto the latest one.

See docs/DESIGN.md §6 ("Incremental checkpoints").

A node sends only what changed since its last acknowledged checkpoint (a
:class:`~hermesx.core.delta.StateDelta`), naming that checkpoint as its base
by ``(age, seq)`` and CRC-32. :func:`put_delta` checks the delta's own
checksum, refuses it (an answer, not an error: the node sends its whole state
then) when the base is not this storesite's latest checkpoint or that one is
damaged, composes the new whole snapshot and writes it like any checkpoint:
in the next group commit, with every check of a whole one, and only while
the base is still the latest. Stored checkpoints are always whole snapshots,
so reading, restoring, moving and moving home never see a delta.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hermesx.core.delta import compose, decode_delta
from hermesx.core.identity import TAD
from hermesx.core.snapshot import decode_state, encode_state, snapshot_checksum
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
    store.arriving(guid, delta_bytes, check, what)
    base = store.delta_base(guid, tad, base_seq, base_checksum)
    if isinstance(base, str):
        reason = f"{what} refused: {base}; send the whole state"
        log.info("storesite %s: %s", store.sid, reason)
        return DeltaOutcome(stored=False, refused=reason)
    latest, base_no = base
    state = compose(decode_state(latest.snapshot), decode_delta(delta_bytes))
    snapshot = encode_state(state)
    store.check_size(guid, snapshot)
    checksum = snapshot_checksum(snapshot)
    stored = store.store_checkpoint(guid, tad, seq, snapshot, checksum, check, base_no=base_no)
    if stored:
        store.deltas_written += 1
    return DeltaOutcome(stored=stored, checksum=checksum if stored else latest.checksum)
