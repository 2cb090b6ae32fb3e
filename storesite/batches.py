"""Several atoms' checkpoints from one node, stored in one group commit (docs/DESIGN.md §4.1, §6).

The call channel's ``checkpoint-batch`` request (:mod:`hermesx.rpc.storesite_batch`)
carries ``checkpoint`` and ``checkpoint-delta`` requests of different atoms.
:func:`put_batch` runs them on the one thread that read the request: it
holds the atoms' locks (in GUID order, as every holder of several does),
checks each as its own request would be checked (size, CRC-32, the delta's
decoding), queues all their writes at once in the group committer
(``GroupCommitter.submit_all``: one transaction, one sync, no thread woken
per checkpoint), and answers each with its own outcome: a refusal (a stale
location, a base that is no longer the latest, a damaged body) fails that
atom's checkpoint only, and a refused base is answered as a lone delta's
(``refused``: the node sends its whole state). The rare delta whose chain is
due a whole snapshot, or that does not decode, is then run as a lone
``checkpoint-delta`` (:func:`storesite.deltas.put_delta`: the chain's cut,
or the refusal's answer), under the same lock.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import lmdb

from hermesx.core.delta import StateDelta
from hermesx.core.errors import HermesError, StorageError
from hermesx.core.identity import GUID
from hermesx.observe import metrics
from hermesx.rpc.convert import tad_of
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.storesite_batch import Outcome
from hermesx.rpc.storesite_client import CHECKPOINT, CHECKPOINT_DELTA
from storesite.deltas import decoded, put_delta
from storesite.records import Provenance
from storesite.service import Storesite

__all__ = ["put_batch"]

log = logging.getLogger(__name__)

_EMPTY: bytes = pb.Empty().SerializeToString()
# Made once: a label's lookup costs a lock and a dict per checkpoint.
_OK = metrics.STORESITE_CHECKPOINTS.labels("ok")
_FAILED = metrics.STORESITE_CHECKPOINTS.labels("failed")
_IN_BATCHES = metrics.STORESITE_CHECKPOINT_TRANSPORTS.labels("call-batch")


class _Item:
    """One checkpoint of a batch: its request, its write, then its outcome."""

    __slots__ = ("decoded", "delta", "guid", "outcome", "request", "write")

    def __init__(self) -> None:
        self.guid = ""
        self.request: pb.CheckpointRequest | None = None  # a whole checkpoint
        self.delta: pb.CheckpointDelta | None = None  # or a delta
        self.decoded: StateDelta | None = None  # the delta's bytes, decoded
        self.write: Callable[[lmdb.Transaction], Any] | None = None
        self.outcome: Outcome = b""

    @property
    def failed(self) -> bool:
        return isinstance(self.outcome, HermesError)


def put_batch(site: Storesite, requests: list[tuple[str, bytes]]) -> list[Outcome]:
    """Store checkpoint requests of several atoms together; each one's reply body or error."""
    started = time.monotonic()
    items = [_parsed(kind, body) for kind, body in requests]
    seen: set[str] = set()
    for item in items:
        if item.failed:
            continue
        if item.guid in seen:  # one checkpoint of an atom at a time: never sent so
            item.outcome = StorageError(f"atom {item.guid}: two checkpoints in one batch")
        seen.add(item.guid)
    store = site.store
    with contextlib.ExitStack() as held:
        for guid in sorted(seen):
            held.enter_context(site.holding(guid))
        for item in items:
            if not item.failed:
                _check(site, item)
        queued = [(item, item.write) for item in items if item.write is not None]
        results = store.committer.submit_all([(item.guid, write) for item, write in queued])
        for (item, _), (result, error) in zip(queued, results, strict=True):
            if error is None:
                # Committed: a bug in one item's answer must not fail the others'.
                try:
                    item.outcome = _done(site, item, result)
                except Exception as exc:
                    item.outcome = _unexpected(site, item, exc)
            elif isinstance(error, HermesError):
                item.outcome = error
            else:
                item.outcome = StorageError(f"storesite {site.sid} did not store it: {error}")
    elapsed = time.monotonic() - started
    for item in items:
        if isinstance(item.outcome, HermesError):
            _FAILED.inc()
        else:
            _OK.inc()
            metrics.STORESITE_CHECKPOINT_SECONDS.observe(elapsed)
    _IN_BATCHES.inc(len(items))
    return [item.outcome for item in items]


def _parsed(kind: str, body: bytes) -> _Item:
    """An item of the request (its outcome an error when it cannot be one)."""
    item = _Item()
    try:
        if kind == CHECKPOINT_DELTA:
            item.delta = pb.CheckpointDelta.FromString(body)
            item.guid = item.delta.head.guid
        elif kind == CHECKPOINT:
            item.request = pb.CheckpointRequest.FromString(body)
            item.guid = item.request.guid
        else:
            raise StorageError(f"a {kind!r} request in a checkpoint batch")
        GUID.parse(item.guid)
    except HermesError as exc:
        item.outcome = exc
    except Exception as exc:  # a body that is not the kind's message
        item.outcome = StorageError(f"a {kind} request in a checkpoint batch is malformed: {exc}")
    return item


def _check(site: Storesite, item: _Item) -> None:
    """Check ``item`` as its own request would be, and make its write (or its error)."""
    store = site.store
    try:
        if item.request is not None:
            request = item.request
            tad = tad_of(request.tad)
            check = Provenance.of(request)
            what = f"checkpoint of atom {item.guid} from {tad} seq {request.seq}"
            checksum = store.arriving(item.guid, request.snapshot, check, what)
            item.write = store.checkpoint_write(
                item.guid, tad, request.seq, request.snapshot, checksum, check
            )
            return
        assert item.delta is not None
        head, base = item.delta.head, (item.delta.base_seq, item.delta.base_checksum)
        tad = tad_of(head.tad)
        check = Provenance.of(head)
        what = f"checkpoint delta of atom {item.guid} from {tad} seq {head.seq}"
        checksum = store.arriving(item.guid, head.snapshot, check, what)
        try:
            delta = decoded(store, head.snapshot)
        except StorageError:
            item.outcome = _alone(site, item)  # answered as a lone one: refused
            return
        item.decoded = delta
        item.write = store.delta_write(
            item.guid, tad, head.seq, head.snapshot, delta, checksum, check, base
        )
    except HermesError as exc:
        item.outcome = exc
    except Exception as exc:
        item.outcome = _unexpected(site, item, exc)


def _unexpected(site: Storesite, item: _Item, exc: Exception) -> StorageError:
    """The error ``item`` is answered with when its own path failed unforeseen (logged once),
    as a lone request's would be (storesite.calls); the other items keep their outcomes."""
    kind = CHECKPOINT if item.delta is None else CHECKPOINT_DELTA
    log.exception("a %s of atom %s in a batch failed unexpectedly", kind, item.guid)
    return StorageError(f"storesite {site.sid} failed in {kind}: {exc}")


def _done(site: Storesite, item: _Item, result: Any) -> Outcome:
    """The reply of ``item`` whose write gave ``result`` in the batch's transaction."""
    if item.delta is None:
        return _EMPTY
    if isinstance(result, tuple):
        stored, name = result
        if stored:
            site.store.deltas_written += 1
            if item.decoded is not None:
                delta = item.delta
                site.store.chains.stored(
                    item.guid, delta.base_checksum, name, delta.head.snapshot, item.decoded
                )
        return _ack(pb.CheckpointAck(stored=stored, checksum=name))
    if isinstance(result, str):  # its base refused: the node sends its whole state
        head = item.delta.head
        what = f"checkpoint delta of atom {item.guid} from {tad_of(head.tad)} seq {head.seq}"
        reason = f"{what} refused: {result}; send the whole state"
        log.info("storesite %s: %s", site.sid, reason)
        return _ack(pb.CheckpointAck(stored=False, refused=reason))
    # Its chain is due a whole snapshot: composed and written as a lone request would.
    return _alone(site, item)


def _alone(site: Storesite, item: _Item) -> Outcome:
    """``item``'s delta run as a lone ``checkpoint-delta`` (its atom's lock held)."""
    assert item.delta is not None
    head = item.delta.head
    try:
        outcome = put_delta(
            site.store,
            item.guid,
            tad_of(head.tad),
            head.seq,
            head.snapshot,
            Provenance.of(head),
            item.delta.base_seq,
            item.delta.base_checksum,
        )
    except HermesError as exc:
        return exc
    return _ack(
        pb.CheckpointAck(stored=outcome.stored, checksum=outcome.checksum, refused=outcome.refused)
    )


def _ack(ack: pb.CheckpointAck) -> bytes:
    body: bytes = ack.SerializeToString()
    return body
