"""Checkpoint policy: when an atom's state is written to its storesite (docs/DESIGN.md §6).

An atom's metadata names its policy: ``every-call`` (checkpointed before each
reply leaves, so an acknowledged call is durable), ``periodic`` (every N
calls and/or every N seconds: nobody is promised durability), or none. An
atom can also ask for one checkpoint itself (the ``checkpoint`` syscall), and
a client can ask the node (the Checkpoint RPC). :meth:`Checkpointing.after_call`
runs after every call, :meth:`Checkpointing.periodic_due` from the node's
housekeeping.
"""

from __future__ import annotations

import logging
import time

from hermesx.core.errors import HermesError, MigrationError, StorageError
from hermesx.core.identity import TAD
from hermesx.node.aborts import UnsentAborts
from hermesx.node.catalog import ActiveAtom
from hermesx.node.context import NodeContext
from hermesx.observe import metrics
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.status import pb_error

__all__ = ["EVERY_CALL", "PERIODIC", "Checkpointing"]

log = logging.getLogger(__name__)

EVERY_CALL = pb.CheckpointPolicy.EVERY_CALL
PERIODIC = pb.CheckpointPolicy.PERIODIC


class Checkpointing:
    """Checkpoints of the atoms of one node."""

    def __init__(self, ctx: NodeContext, aborts: UnsentAborts) -> None:
        self._ctx = ctx
        self._aborts = aborts

    @metrics.timed(metrics.CHECKPOINTS, metrics.CHECKPOINT_SECONDS)
    def checkpoint(self, active: ActiveAtom, *, periodic: bool = False) -> TAD:
        """Checkpoint ``active`` now; ``periodic``: no caller is told its calls are durable."""
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
        self._ctx.storesites.ship_logs(active.guid)
        return active.tad

    def checkpoint_requested(self, active: ActiveAtom) -> TAD:
        """A checkpoint a client asked for (the Checkpoint RPC), between calls."""
        with active.fixed(30.0) as ok:
            if not ok:
                raise MigrationError(f"atom {active.guid} left node {self._ctx.name}")
            return self.checkpoint(active)

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
        periodic = policy.mode == PERIODIC and not active.checkpoint_request
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
            if policy.mode == EVERY_CALL and reply.WhichOneof("outcome") == "result":
                # The call ran but is not durable: the caller must not take it as acknowledged.
                reply.error.CopyFrom(
                    pb_error(
                        StorageError(f"atom {active.guid}: call ran but checkpoint failed: {exc}")
                    )
                )
            else:
                log.warning("atom %s: checkpoint failed: %s", active.guid, exc)

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
