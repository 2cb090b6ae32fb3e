"""Drain: take a node out of service and move its atoms away (docs/DESIGN.md §5 "Drain").

``hermesx drain NODE`` (the ``Drain`` RPC) and SIGTERM on ``hermesx node
serve`` call :meth:`Drainer.drain`. The node first registers as draining,
so from then on no storesite places an atom here, no move chooses it and
creates are refused (clients pick another node). Then it moves every atom
it holds, each by the ordinary two-phase move of
:mod:`hermesx.node.migration_source`, to the node :func:`rank_nodes` ranks
first for that atom's tags (in service, with room in its budget, least
loaded); a refused move tries the next node. Calls that arrive meanwhile
wait for the move and are forwarded, as in every move, so none fails. The
drain ends when nothing is left here (no active atom, no staged copy) or
when its time runs out; a node that is stopping after a drain that did
not finish leaves the rest to recovery from their checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from hermesx.core.errors import HermesError, NotActiveHereError
from hermesx.node.context import NodeContext
from hermesx.node.migration_source import MigrationSource
from hermesx.rpc.node_client import Member, placement_load
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.ranking import rank_nodes

__all__ = ["Drainer"]

log = logging.getLogger(__name__)

# Pause between rounds while atoms are moving or staged copies settle.
ROUND_PAUSE_S = 0.2
# Nodes a drain tries for one atom in one round before it looks again.
TRIES_PER_ATOM = 3
MOVED, GONE = "moved", "gone"


class Drainer:
    """Moves every atom off this node, once it is out of service."""

    def __init__(self, ctx: NodeContext, source: MigrationSource) -> None:
        self._ctx = ctx
        self._node = ctx.name
        self._source = source
        self.moved = 0

    def drain(self, timeout_s: float) -> pb.DrainReply:
        """Mark the node draining and move its atoms away within ``timeout_s`` seconds."""
        self._ctx.fencing.set_draining()
        deadline = time.monotonic() + max(timeout_s, 0.0)
        failures: dict[str, str] = {}
        moved = 0
        while True:
            held = self._held()
            if not held and not self._ctx.catalog.staged:
                break
            if time.monotonic() >= deadline:
                break
            members = self._ctx.naming.nodes()
            loads = self._loads(members)
            progress = False
            for guid in held:
                if time.monotonic() >= deadline:
                    break
                outcome = self._move_one(guid, members, loads)
                if outcome in (MOVED, GONE):
                    moved += outcome == MOVED
                    progress = True
                    failures.pop(guid, None)
                else:
                    failures[guid] = outcome
            if (
                not progress
                and held
                and all(failures.get(g, "").startswith("no node") for g in held)
            ):
                # Nowhere to go (every other node is draining or lacks the
                # tags): waiting would not help; recovery takes them later.
                break
            if not progress:
                time.sleep(ROUND_PAUSE_S)
        remaining = len(self._held())
        self.moved += moved
        left = {g: why for g, why in failures.items() if g in self._ctx.catalog.atoms}
        if remaining:
            log.warning(
                "node %s: drain left %d atom(s) here (%d moved): %s",
                self._node,
                remaining,
                moved,
                "; ".join(f"{g}: {why}" for g, why in sorted(left.items())) or "out of time",
            )
        else:
            log.info("node %s drained: %d atom(s) moved away", self._node, moved)
        return pb.DrainReply(
            moved=moved,
            remaining=remaining,
            failures=[f"{g}: {why}" for g, why in sorted(left.items())],
        )

    def _held(self) -> list[str]:
        return sorted(self._ctx.catalog.atoms)

    def _loads(self, members: Mapping[str, Member]) -> dict[str, int | None]:
        loads: dict[str, int | None] = {}
        for name, member in members.items():
            if name == self._node:
                continue
            try:
                loads[name] = placement_load(self._ctx.invoker.nodes.status(member, timeout=2.0))
            except HermesError:
                loads[name] = None
        return loads

    def _move_one(
        self, guid: str, members: Mapping[str, Member], loads: dict[str, int | None]
    ) -> str:
        """Move ``guid`` to the best node that takes it: MOVED, GONE, or why not."""
        active = self._ctx.catalog.atoms.get(guid)
        if active is None:
            return GONE
        if active.state != "active":
            return "moving"
        candidates = rank_nodes(members, active.meta.tags, loads, exclude={self._node})
        if not candidates:
            tags = ",".join(active.meta.tags)
            return "no node in service" + (f" carries tags {tags}" if tags else " to take it")
        why = ""
        for member in candidates[:TRIES_PER_ATOM]:
            try:
                self._source.migrate(guid, member.name)
            except NotActiveHereError:
                return GONE  # moved or dropped meanwhile
            except HermesError as exc:
                why = f"{member.name}: {exc}"
                continue
            load = loads.get(member.name)
            loads[member.name] = (load or 0) + 1
            return MOVED
        return why
