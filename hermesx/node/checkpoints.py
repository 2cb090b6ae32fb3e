"""Checkpoint policy: when an atom's state is written to its storesite (docs/DESIGN.md §6).

An atom's metadata names its policy: ``every-call`` (checkpointed before each
reply leaves, so an acknowledged call is durable), ``periodic`` (every N
calls and/or every N seconds: nobody is promised durability), or none. An
atom can also ask for one checkpoint itself (the ``checkpoint`` syscall), and
a client can ask the node (the Checkpoint RPC). :meth:`Checkpointing.after_call`
runs after every call, :meth:`Checkpointing.periodic_due` from the node's
housekeeping.

Incremental (docs/DESIGN.md §6): an atom with a
:class:`~hermesx.runtime.delta.ChangeTracker` sends only what changed since
its last acknowledged checkpoint, one checkpoint at a time (its
``send_lock``): a capture is taken, sent and acknowledged before the next is
taken, so every delta's base is the storesite's latest. A delta the
storesite refuses (its base is not the latest) is sent again whole. The
checkpoints of several atoms ready at once may travel to their storesite in
one request (:mod:`hermesx.rpc.storesite_batch`), each with its own outcome. A call
that changed nothing durable (no memory chunk, KV entry, mailbox entry or
global, and no outgoing call or send) takes no checkpoint: its reply stays
in the atom's reply table and travels with the next checkpoint (docs/DESIGN.md §4
"Exactly once" argues why that is enough). Daemon and reentrant atoms
checkpoint their whole state each time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from hermesx.core.delta import encode_delta
from hermesx.core.errors import HermesError, MigrationError, StorageError, UnreachableError
from hermesx.core.identity import TAD
from hermesx.core.snapshot import encode_state
from hermesx.node.aborts import UnsentAborts
from hermesx.node.catalog import ActiveAtom
from hermesx.node.context import NodeContext
from hermesx.observe import metrics
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.status import pb_error
from hermesx.runtime.delta import Capture, ChangeTracker

__all__ = ["EVERY_CALL", "PERIODIC", "Checkpointing"]

log = logging.getLogger(__name__)

EVERY_CALL = pb.CheckpointPolicy.EVERY_CALL
PERIODIC = pb.CheckpointPolicy.PERIODIC
# An atom unused this long gives up the base of its incremental checkpoints
# (a copy of its memory): its next checkpoint is whole. Bounds what idle
# atoms cost the node beyond their own state.
IDLE_BASE_S = 60.0
# How long a message to a durable atom waits for the atom (a move, a running call)
# to take the checkpoint that stores it.
SEND_STORED_WAIT_S = 30.0


class Checkpointing:
    """Checkpoints of the atoms of one node."""

    def __init__(self, ctx: NodeContext, aborts: UnsentAborts) -> None:
        self._ctx = ctx
        self._aborts = aborts

    @metrics.timed(metrics.CHECKPOINTS, metrics.CHECKPOINT_SECONDS)
    def checkpoint(self, active: ActiveAtom, *, periodic: bool = False) -> TAD:
        """Checkpoint ``active`` now; ``periodic``: no caller is told its calls are durable."""
        if active.changes is None:
            tad = self._whole(active, periodic)
        else:
            with active.send_lock:
                tad = self._incremental(active, active.changes, periodic)
        # The atom's log lines follow its checkpoint to the storesite (§12).
        self._ctx.storesites.ship_logs(active.guid)
        return tad

    def _incremental(self, active: ActiveAtom, tracker: ChangeTracker, periodic: bool) -> TAD:
        """A checkpoint of what changed since the last acknowledged one, if anything did."""
        outgoing = active.outgoing
        with active.checkpoint_lock:
            capture = active.atom.capture_changes(tracker)
            assert capture is not None  # tracked atoms are neither daemons nor reentrant
            self._ctx.pause("checkpoint-snapshot")
            if (
                not capture.changed
                and tracker.base is not None
                and outgoing == active.outgoing_checkpointed
            ):
                # Read-only since the last checkpoint: nothing durable to write.
                active.checkpointed_generation = capture.generation
                return active.tad
            active.checkpoint_seq += 1
            seq = active.checkpoint_seq
        try:
            seq, checksum = self._send(active, tracker, capture, seq, periodic)
        except BaseException:
            tracker.reset()
            raise
        tracker.acknowledged(capture, seq, checksum)
        active.outgoing_checkpointed = outgoing
        active.checkpointed_generation = max(active.checkpointed_generation, capture.generation)
        active.last_checkpoint = time.monotonic()
        return active.tad

    def _send(
        self, active: ActiveAtom, tracker: ChangeTracker, capture: Capture, seq: int, periodic: bool
    ) -> tuple[int, int]:
        """Send a capture as checkpoint ``seq``: its delta, or (no delta, or a refused one)
        the whole state. Returns the seq it was stored as and the stored checksum."""
        storesites = self._ctx.storesites
        base = tracker.base
        if capture.delta is not None and base is not None:
            ack = storesites.put_delta(
                active.guid,
                active.tad,
                encode_delta(capture.delta),
                seq,
                base,
                generation=capture.generation,
                periodic=periodic,
            )
            if not ack.refused:
                if not ack.stored:
                    raise StorageError(
                        f"atom {active.guid}: checkpoint seq {seq} was not stored: the storesite "
                        "holds a newer one"
                    )
                return seq, ack.checksum
            log.info("atom %s: %s", active.guid, ack.refused)
            with active.checkpoint_lock:
                active.checkpoint_seq += 1
                seq = active.checkpoint_seq
        snapshot = encode_state(tracker.whole_state(capture))
        checksum = storesites.put_checkpoint(
            active.guid,
            active.tad,
            snapshot,
            seq,
            generation=capture.generation,
            periodic=periodic,
        )
        return seq, checksum

    def _whole(self, active: ActiveAtom, periodic: bool) -> TAD:
        """A checkpoint of the whole state (daemon and reentrant atoms)."""
        # The seq is drawn with the snapshot, under one lock: a snapshot taken
        # later always gets a higher seq, so the storesite, which keeps only
        # the highest seq of an age, never lets an older state replace a newer
        # one that a later call's reply already promised.
        with active.checkpoint_lock:
            snapshot, generation = active.atom.snapshot_with_generation()
            self._ctx.pause("checkpoint-snapshot")
            active.checkpoint_seq += 1
            seq = active.checkpoint_seq
        self._ctx.storesites.put_checkpoint(
            active.guid, active.tad, snapshot, seq, generation=generation, periodic=periodic
        )
        active.checkpointed_generation = max(active.checkpointed_generation, generation)
        active.last_checkpoint = time.monotonic()
        return active.tad

    def checkpoint_requested(self, active: ActiveAtom) -> TAD:
        """A checkpoint a client asked for (the Checkpoint RPC), between calls."""
        with active.fixed(30.0) as ok:
            if not ok:
                raise MigrationError(f"atom {active.guid} left node {self._ctx.name}")
            return self.checkpoint(active)

    def after_send(self, active: ActiveAtom, chain: Sequence[str] = ()) -> None:
        """A message queued for (or a copy of one delivered to) an ``every-call`` atom is
        acknowledged only once a checkpoint holds it (docs/DESIGN.md §4 "Exactly once").

        Not when the atom is on the sending call's ``chain`` (it sent to itself, or its
        running call waits on the sender): its turn comes only after the sender's call,
        and the checkpoint of its own running call, before that call's reply, holds it.
        """
        if active.meta.checkpoint.mode != EVERY_CALL or active.guid in chain:
            return
        with active.fixed(SEND_STORED_WAIT_S) as here:
            if not here:
                # Moved (its new copy holds the message and its id), dropped (recovered
                # from an older checkpoint) or still moving: the sender's next copy tells.
                raise UnreachableError(
                    f"atom {active.guid} left node {self._ctx.name} (or is moving) before "
                    "the message queued for it was stored"
                )
            try:
                self.checkpoint(active)
            except HermesError as exc:
                raise StorageError(
                    f"atom {active.guid}: message queued but its checkpoint failed: {exc}"
                ) from exc

    def after_call(self, active: ActiveAtom, reply: pb.InvokeReply) -> None:
        """Checkpoints due after a call; for every-call atoms, before the reply leaves."""
        policy = active.meta.checkpoint
        due = active.checkpoint_request
        if policy.mode == EVERY_CALL:
            due = True
        elif policy.mode == PERIODIC and policy.every_calls > 0:
            due = due or (
                active.atom.generation - active.checkpointed_generation >= policy.every_calls
            )
        if not due or active.atom.generation == active.checkpointed_generation:
            return
        # Only every-call checkpoints and requested ones promise durability.
        requested = active.checkpoint_request
        periodic = policy.mode == PERIODIC and not requested
        active.checkpoint_request = False
        try:
            try:
                self.checkpoint(active, periodic=periodic)
            except MigrationError:
                if active.guid not in self._aborts:
                    raise
                # The storesite is back but has not heard our abort of a move
                # yet, so it still thinks the atom is moving: tell it, retry.
                self._aborts.retry()
                self.checkpoint(active, periodic=periodic)
        except HermesError as exc:
            if (policy.mode == EVERY_CALL or requested) and reply.WhichOneof("outcome") == "result":
                # The call ran but is not durable (its policy, or the atom itself through
                # the checkpoint syscall, asked that it be): not acknowledged.
                reply.error.CopyFrom(
                    pb_error(
                        StorageError(f"atom {active.guid}: call ran but checkpoint failed: {exc}")
                    )
                )
            else:
                log.warning("atom %s: checkpoint failed: %s", active.guid, exc)

    @staticmethod
    def forget_idle_base(active: ActiveAtom, now: float) -> None:
        """Drop the delta base of an atom unused for :data:`IDLE_BASE_S` (housekeeping)."""
        tracker = active.changes
        if tracker is None or tracker.base is None or now - active.last_used < IDLE_BASE_S:
            return
        if active.send_lock.acquire(blocking=False):  # not while a checkpoint is under way
            try:
                tracker.reset()
            finally:
                active.send_lock.release()

    @staticmethod
    def periodic_due(active: ActiveAtom, now: float) -> bool:
        """Whether a periodic atom's time-based checkpoint is due (it changed since the last)."""
        policy = active.meta.checkpoint
        return (
            policy.mode == PERIODIC
            and policy.every_seconds > 0
            and active.atom.generation != active.checkpointed_generation
            and now - active.last_checkpoint >= policy.every_seconds
        )
