"""A move of an atom, the source's side: the two-phase commit it coordinates (docs/DESIGN.md §5).

The source freezes the atom (new calls wait), asks the storesite to PREPARE
(which fixes the age the atom will have at the destination), sends the
snapshot to the destination (which stages a copy) and to the storesite (which
stages the checkpoint-to-be) at once, then COMMITs at the storesite naming
the incarnation that staged the copy. Before COMMIT any failure aborts: the
storesite forgets the move (or hears it later, :mod:`hermesx.node.aborts`),
the destination discards its copy, and the atom serves here again. After
COMMIT the atom lives at the destination whatever happens next: the source
drops it, forwards to the new TAD, and tells the destination to activate.
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent import futures

from hermesx.core.errors import CapacityError, HermesError, MigrationError, NotActiveHereError
from hermesx.core.identity import TAD, validate_name
from hermesx.core.snapshot import snapshot_checksum
from hermesx.node.aborts import UnsentAborts
from hermesx.node.catalog import ActiveAtom
from hermesx.node.context import NodeContext
from hermesx.observe import atomlog, metrics
from hermesx.routing.peers import StoresiteAbsentError
from hermesx.rpc.atom_meta import tags_refusal
from hermesx.rpc.convert import tad_to_pb
from hermesx.rpc.node_client import Member
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.ranking import in_service
from hermesx.rpc.storesite_client import CheckedSnapshot

__all__ = ["MigrationSource"]

log = logging.getLogger(__name__)


class MigrationSource:
    """Moves atoms of this node to other nodes."""

    def __init__(self, ctx: NodeContext, aborts: UnsentAborts, transfers: futures.Executor) -> None:
        self._ctx = ctx
        self._node = ctx.name
        self._catalog = ctx.catalog
        self._storesites = ctx.storesites
        self._aborts = aborts
        # Sends a snapshot to the storesite while the destination receives it.
        self._transfers = transfers

    @metrics.timed(metrics.MIGRATIONS, metrics.MIGRATION_SECONDS)
    def migrate(self, guid: str, destination: str) -> pb.MigrateReply:
        started = time.perf_counter()
        validate_name(destination, "node name")
        active = self._catalog.atoms.get(guid)
        if active is None or active.state != "active":
            raise NotActiveHereError(f"atom {guid} is not active on node {self._node}")
        if destination == self._node:
            raise MigrationError(f"atom {guid} is already on node {destination}")
        members = self._ctx.naming.nodes()
        if destination not in members:
            raise MigrationError(f"node {destination!r} is not a live member of the cluster")
        if not in_service(members[destination]):
            raise MigrationError(f"node {destination} is draining: it takes no new atoms")
        refusal = tags_refusal(guid, destination, active.meta.tags, members[destination].tags)
        if refusal:
            raise MigrationError(f"cannot move: {refusal}")
        held_from = time.perf_counter()
        snapshot = active.freeze(wait=30.0)
        phases = {"snapshot": time.perf_counter()}
        try:
            age = self._storesites.prepare(guid, active.tad, destination)
            phases["prepare"] = time.perf_counter()
            self._ctx.pause("prepared")
            new_tad = TAD(destination, age)
        except HermesError as exc:
            active.thaw()
            raise MigrationError(f"atom {guid}: storesite refused the move: {exc}") from exc
        checksum = snapshot_checksum(snapshot)
        copy = pb.CopyRequest(
            guid=guid,
            tad=tad_to_pb(new_tad),
            snapshot=snapshot,
            meta=active.meta,
            source=self._node,
            checksum=checksum,
            logs=atomlog.BOOK.export(guid),
        )
        # The two copies travel at once: the destination stages its copy while
        # the storesite stages the checkpoint-to-be, so COMMIT carries no state.
        state = CheckedSnapshot(snapshot, checksum, active.frozen_generation)
        staging = self._transfers.submit(self._storesites.stage, guid, new_tad, state)
        nodes = self._ctx.invoker.nodes
        dst = None
        try:
            dst = self._ctx.invoker.node(destination)
            staged_by = nodes.stage_copy(dst, copy)
            # The COMMIT names who staged the copy: a restarted destination has none.
            if not staged_by:
                raise MigrationError(f"node {destination} did not say which incarnation staged")
            copy.incarnation = staged_by
            staging.result()
            phases["transfer"] = time.perf_counter()
            self._ctx.pause("transferred")
        except HermesError as exc:
            with contextlib.suppress(HermesError):
                staging.result()
            self._abort(guid, new_tad, dst)
            active.thaw()
            if isinstance(exc, CapacityError):  # the destination is full: say so as it did
                raise CapacityError(f"atom {guid} was not moved: {exc}") from exc
            raise MigrationError(f"atom {guid}: move to {destination} failed: {exc}") from exc
        try:
            self._storesites.commit(guid, new_tad, copy.incarnation)
        except HermesError as exc:
            # No storesite registered: the COMMIT was never sent, nothing to settle.
            absent = isinstance(exc, StoresiteAbsentError)
            recorded = active.tad if absent else self._settle(active, new_tad)
            if recorded is None:
                # This node let the atom go (its session) with the outcome unknown: the
                # record may name the destination, whose staged copy is then the atom.
                # Only the storesite forgets the move; the destination settles its copy
                # from the record (docs/DESIGN.md §5).
                self._aborts.abort(guid, new_tad.age)
            elif recorded != new_tad:
                self._abort(guid, new_tad, dst)
                if recorded == active.tad:
                    active.thaw()  # aborted: the atom serves here again
                else:  # recovered elsewhere meanwhile: this copy is stale
                    self._catalog.drop(active, recorded)
            if recorded != new_tad:
                raise MigrationError(f"atom {guid}: commit at the storesite failed: {exc}") from exc
            log.warning("atom %s: the commit's answer was lost, but it was written", guid)
        phases["commit"] = time.perf_counter()
        self._ctx.pause("committed")
        # Committed: the destination is where the atom lives now.
        unsent_logs = atomlog.BOOK.unshipped(guid)  # the ring goes with the drop
        self._catalog.drop(active, new_tad)
        self._ctx.pause("dropped")  # calls forwarded to the destination before it activates
        copy.snapshot = b""
        copy.ClearField("checksum")
        try:
            nodes.activate_copy(dst, copy)
        except HermesError as exc:
            # The storesite has the checkpoint and the location: a live
            # destination activates its staged copy when it asks the storesite;
            # if that incarnation is gone, the atom is recovered from there.
            log.warning("atom %s: activation at %s failed after commit: %s", guid, destination, exc)
            raise MigrationError(
                f"atom {guid}: the move to {destination} is committed but {destination} "
                f"did not activate it ({exc}); it comes back from the staged copy there, "
                "or from its checkpoint on another node if that node is gone"
            ) from exc
        phases["activate"] = time.perf_counter()
        held_ms = (time.perf_counter() - held_from) * 1000
        total_ms = (time.perf_counter() - started) * 1000
        steps, last = [], held_from
        for step, at in phases.items():
            steps.append(f"{step} {(at - last) * 1000:.1f}")
            last = at
        log.info(
            "atom %s moved to %s in %.1f ms (%d bytes; ms: %s)",
            guid,
            new_tad,
            total_ms,
            len(snapshot),
            ", ".join(steps),
        )
        self._storesites.ship_logs(guid, unsent_logs)  # best effort, the atom serving there
        return pb.MigrateReply(
            tad=tad_to_pb(new_tad), state_bytes=len(snapshot), held_ms=held_ms, total_ms=total_ms
        )

    def _settle(self, active: ActiveAtom, new_tad: TAD) -> TAD | None:
        """Where the record puts the atom after a COMMIT that failed; None if this node
        dropped the atom meanwhile (it lost its session).

        A COMMIT may be written and its answer lost (a timeout, a broken
        connection). Thawing then would serve a second copy (docs/DESIGN.md
        §5). An abort heard by the storesite makes the record final (a COMMIT
        still on its way is refused), so: abort, then read the record: the
        source's TAD (aborted), the destination's (committed), or a newer one
        (recovered elsewhere meanwhile). Until the storesite answers both the
        atom stays frozen: unavailable, never twice.
        """
        guid, pause = active.guid, 0.1
        while self._catalog.atoms.get(guid) is active:
            try:
                self._storesites.abort(guid, new_tad.age, 5.0)
                return self._storesites.location(guid, 5.0)
            except HermesError as exc:
                log.warning("atom %s: commit's outcome not known yet (%s); asking again", guid, exc)
            time.sleep(pause)  # the storesite is away: ask again, less often
            pause = min(pause * 2, 2.0)
        return None

    def _abort(self, guid: str, tad: TAD, dst: Member | None) -> None:
        """Before COMMIT: the storesite forgets the move, the destination its staged copy."""
        self._aborts.abort(guid, tad.age)
        if dst is not None:
            with contextlib.suppress(HermesError):
                self._ctx.invoker.nodes.discard_copy(dst, guid, tad)

    def move_quietly(self, guid: str, destination: str) -> None:
        """A move the atom asked for (``move_to``) or its placement policy decided."""
        try:
            self.migrate(guid, destination)
        except HermesError as exc:
            log.warning("atom %s: move_to %s failed: %s", guid, destination, exc)
