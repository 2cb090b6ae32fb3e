"""A move of an atom, the destination's side, and activation by a storesite (docs/DESIGN.md §5, §6).

A move's source sends the atom here three ways: *stage* a copy (StageCopy:
restored, not serving), *activate* it once the move is committed
(ActivateCopy), or *discard* it when the move aborted (DiscardCopy). A
storesite activates a dormant or recovered atom here in ``Activate``, in two
steps: *stage* (restore the copy
and name our incarnation) and *confirm* (serve it, once the storesite
recorded this TAD durably). A staged copy nobody activated or discarded for
STAGED_RESOLVE_AFTER_S is settled by asking the storesite where the atom is
(:meth:`MigrationDestination.resolve_staged`): its source may have died after
COMMIT.

Every copy taken here names this node's incarnation, and serves only while
the node's lease holds and the incarnation is still ours.
"""

from __future__ import annotations

import contextlib
import logging

from hermesx.core.errors import HermesError, MigrationError
from hermesx.core.identity import TAD
from hermesx.core.snapshot import verify_checksum
from hermesx.node.builder import AtomBuilder
from hermesx.node.catalog import StagedCopy
from hermesx.node.context import NodeContext
from hermesx.observe import atomlog, metrics
from hermesx.rpc.atom_meta import tags_refusal
from hermesx.rpc.convert import tad_from_pb
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.runtime.atom import Atom

__all__ = ["STAGED_RESOLVE_AFTER_S", "MigrationDestination"]

log = logging.getLogger(__name__)

# A staged copy nobody activated or discarded for this long is checked
# against the storesite (its source may have died after COMMIT).
STAGED_RESOLVE_AFTER_S = 5.0


class MigrationDestination:
    """Takes atoms into this node: moves' copies and storesites' activations."""

    def __init__(self, ctx: NodeContext, builder: AtomBuilder) -> None:
        self._ctx = ctx
        self._node = ctx.name
        self._catalog = ctx.catalog
        self._fencing = ctx.fencing
        self._builder = builder

    # ------------------------------------------------------------ a move's source

    def accept(self, request: pb.CopyRequest, *, commit: bool, budgeted: bool = True) -> str:
        """Stage a copy, or (``commit``) activate one; returns the incarnation that took it.

        ``budgeted``: a staged copy takes room in the node's budget, or is refused
        (all but a recovery, docs/DESIGN.md §6).
        """
        guid = request.guid
        tad = self._sent_here(guid, request.tad)
        if not commit and not request.snapshot:
            raise MigrationError(f"atom {guid}: a staged copy needs a snapshot")
        incarnation = self._fencing.taking_incarnation(f"cannot accept atom {guid}")
        if request.snapshot and request.HasField("checksum"):
            # Never restore damage: a storesite or a source checked it, but
            # it may have been hurt on the way here.
            verify_checksum(
                request.snapshot,
                request.checksum,
                f"snapshot of atom {guid} sent to node {self._node} for {tad}",
            )
        if commit and request.incarnation and request.incarnation != incarnation:
            self._catalog.discard_staged(guid)
            raise MigrationError(
                f"atom {guid}: the move committed incarnation {request.incarnation} of node "
                f"{self._node}, which restarted as {incarnation}; it holds no staged copy"
            )
        if not commit:
            self._stage(request, tad, incarnation, budgeted)
        else:
            self._activate(request, tad, incarnation)
        return incarnation

    def discard(self, request: pb.DiscardCopyRequest) -> None:
        """The move aborted: drop the copy staged for it."""
        self._sent_here(request.guid, request.tad)
        self._catalog.discard_staged(request.guid)

    def _sent_here(self, guid: str, tad_pb: pb.TAD) -> TAD:
        """The TAD a move's request names, which must be at this node."""
        tad = tad_from_pb(tad_pb)
        if tad is None or tad.node != self._node:
            raise MigrationError(f"atom {guid}: node {self._node} was sent a TAD for {tad}")
        return tad

    def _restore(self, request: pb.CopyRequest, what: str) -> Atom:
        """The atom in ``request``'s snapshot, restored; only while our lease holds."""
        guid = request.guid
        atom = self._builder.restore(guid, request.meta, request.snapshot)
        try:
            self._fencing.check_lease(f"atom {guid} was not {what}")
        except HermesError:
            atom.close()
            raise
        return atom

    def _stage(self, request: pb.CopyRequest, tad: TAD, incarnation: str, budgeted: bool) -> None:
        guid = request.guid
        if self._fencing.draining:
            # docs/DESIGN.md §5 "Drain": the mover or the storesite picks another node.
            raise MigrationError(f"node {self._node} is draining: it takes no new atoms")
        refusal = tags_refusal(guid, self._node, request.meta.tags, self._ctx.config.tags)
        if refusal:
            raise MigrationError(refusal)
        # A move here past the node's budget is refused before the atom leaves its
        # source, a dormant atom's activation too (another node is tried); a
        # recovery never is, so it always finds a home (docs/DESIGN.md §6).
        room = (
            self._ctx.budget.taking(
                f"atom {guid} stays where it is" if request.source else f"atom {guid} not staged"
            )
            if budgeted
            else contextlib.nullcontext()
        )
        with room:
            self._stage_copy(request, tad, incarnation)

    def _stage_copy(self, request: pb.CopyRequest, tad: TAD, incarnation: str) -> None:
        guid = request.guid
        atom = self._restore(request, "staged")
        meta = pb.AtomMeta()
        meta.CopyFrom(request.meta)
        staged = self._catalog.staged
        with self._catalog.staged_lock:
            old = staged.get(guid)
            if old is not None and old.tad.age > tad.age:
                newer: StagedCopy | None = old
            else:
                newer = None
                staged[guid] = StagedCopy(tad, meta, atom)
        if newer is not None:
            # A late request: a newer attempt already staged the atom here.
            atom.close()
            raise MigrationError(
                f"atom {guid}: a copy for {newer.tad} is staged on {self._node}; {tad} is older"
            )
        if old is not None:
            old.atom.close()
        if self._fencing.incarnation != incarnation:
            self._catalog.discard_staged(guid)  # our session was lost meanwhile
            self._fencing.still_incarnation(incarnation, f"atom {guid} was not staged")

    def _activate(self, request: pb.CopyRequest, tad: TAD, incarnation: str) -> None:
        guid = request.guid
        # Before taking the staged copy: refused now, it stays staged and
        # settles later by asking the storesite.
        self._fencing.check_lease(f"atom {guid} was not activated")
        staged = self._catalog.take_staged(guid)
        held = self._catalog.atoms.get(guid)
        if staged is None and held is not None and held.tad == tad:
            # A call forwarded here by the source after COMMIT settled the staged
            # copy first (resolve_staged): it already serves at this TAD.
            return
        if staged is not None and staged.tad.age == tad.age:
            meta, atom = staged.meta, staged.atom
        else:
            if staged is not None:
                staged.atom.close()
            if not request.snapshot:
                raise MigrationError(
                    f"atom {guid}: nothing staged on {self._node} for age {tad.age}"
                )
            atom = self._restore(request, "activated")  # the restore took a while
            meta = request.meta
        active = self._catalog.install(guid, atom, meta, tad)
        if self._fencing.incarnation != incarnation:
            self._catalog.drop(active, None)  # our session was lost meanwhile: it must not serve
            self._fencing.still_incarnation(incarnation, f"atom {guid} was not activated")
        metrics.ACTIVATIONS.labels("move" if request.source else "storesite").inc()
        atomlog.BOOK.arrived(guid, tad.age, request.logs)
        log.info("atom %s active here at %s (from %s)", guid, tad, request.source or "storesite")

    # ------------------------------------------------------------ Activate (a storesite)

    def activate(self, request: pb.ActivateRequest) -> pb.ActivateReply:
        """Activation by a storesite (dormant atom, recovery), in two steps (docs/DESIGN.md §6).

        ``stage``: restore the copy staged and name our incarnation; the copy
        serves only after ``confirm``, which the storesite sends once it has
        recorded this TAD durably — or, if that never arrives, once the
        storesite's record names this TAD when the staged copy asks
        (:meth:`resolve_staged`). A late stage request, after the storesite
        gave up on this node, thus never serves: the record names another TAD.
        A request without either is the one-step activation of older storesites.
        """
        copy = pb.CopyRequest(
            guid=request.guid,
            tad=request.tad,
            snapshot=b"" if request.confirm else request.snapshot,
            meta=request.meta,
            source="",
            incarnation=request.incarnation if request.confirm else "",
        )
        if request.HasField("checksum") and not request.confirm:
            copy.checksum = request.checksum
        current = self._fencing.incarnation
        if request.incarnation and request.incarnation != current:
            raise MigrationError(
                f"atom {request.guid}: activation meant for incarnation "
                f"{request.incarnation} of node {self._node}, which is now "
                f"{current or 'not registered'}"
            )
        if request.stage and not request.snapshot:
            raise MigrationError(f"atom {request.guid}: a staged activation needs a snapshot")
        if request.stage:
            self._ctx.pause("activate-stage")  # a slow restore
        active = self._catalog.atoms.get(request.guid)
        if request.confirm and active is not None and active.tad == tad_from_pb(request.tad):
            # The staged copy already settled by asking the storesite.
            return pb.ActivateReply(tad=request.tad, incarnation=self._fencing.incarnation)
        incarnation = self.accept(copy, commit=not request.stage, budgeted=not request.recovery)
        if request.stage:
            log.info(
                "atom %s staged here at %s; it serves once the storesite has recorded it",
                request.guid,
                tad_from_pb(request.tad),
            )
        return pb.ActivateReply(tad=request.tad, incarnation=incarnation)

    # ------------------------------------------------------------ staged copies left alone

    def settle_stale(self, now: float) -> None:
        """Settle the staged copies left alone for STAGED_RESOLVE_AFTER_S (housekeeping)."""
        for guid, staged in list(self._catalog.staged.items()):
            if now - staged.since > STAGED_RESOLVE_AFTER_S and not self._fencing.fenced:
                self.resolve_staged(guid)

    def resolve_staged(self, guid: str) -> bool:
        """Settle a staged copy whose source went quiet; True if it is now active here.

        The source tells us after COMMIT; if it died in between, the storesite
        says where the atom is: here at the staged age (committed: activate
        the copy), somewhere newer (discard it), or still older (the move may
        still commit: keep it).
        """
        staged = self._catalog.staged.get(guid)
        if staged is None:
            return False
        self._ctx.pause("resolve-staged")  # a storesite slow to answer
        try:
            where = self._ctx.invoker.locate(guid)
        except HermesError as exc:
            log.debug("atom %s: cannot settle the staged copy yet: %s", guid, exc)
            return False
        if where == staged.tad and not self._fencing.lease_held(
            f"activation of staged atom {guid}"
        ):
            return False
        with self._catalog.staged_lock:
            if self._catalog.staged.get(guid) is not staged:
                return guid in self._catalog.atoms
            if where == staged.tad:
                del self._catalog.staged[guid]
            elif where.age > staged.tad.age:
                del self._catalog.staged[guid]
                staged.atom.close()
                self._catalog.changed()
                log.info(
                    "atom %s: dropped a staged copy for %s, it is at %s", guid, staged.tad, where
                )
                return False
            else:
                return False
        self._catalog.install(guid, staged.atom, staged.meta, staged.tad)
        log.warning(
            "atom %s: its move to %s was committed but the source went quiet; "
            "activated the staged copy",
            guid,
            staged.tad,
        )
        return True
