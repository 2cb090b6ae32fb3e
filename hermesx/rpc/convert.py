"""Conversions between hermesx's own types and their wire messages."""

from __future__ import annotations

from hermesx.core.identity import TAD
from hermesx.core.types import Hop, MigrationResult, NodeStatus
from hermesx.rpc.proto import hermesx_pb2 as pb

__all__ = [
    "hop_from_pb",
    "migration_from_pb",
    "node_status_from_pb",
    "tad_from_pb",
    "tad_of",
    "tad_to_pb",
]


def tad_to_pb(tad: TAD) -> pb.TAD:
    return pb.TAD(node=tad.node, age=tad.age)


def tad_from_pb(msg: pb.TAD) -> TAD | None:
    """The TAD in ``msg``, or None when the field was left empty."""
    if not msg.node:
        return None
    return TAD(msg.node, int(msg.age))


def tad_of(msg: pb.TAD) -> TAD:
    """The TAD in ``msg``, empty fields and all (a request's TAD is checked by its handler)."""
    return TAD(msg.node, int(msg.age))


def hop_from_pb(msg: pb.Hop) -> Hop:
    return Hop(msg.node, msg.event, tad_from_pb(msg.tad), msg.detail)


def migration_from_pb(guid: str, msg: pb.MigrateReply) -> MigrationResult:
    return MigrationResult(guid, tad_of(msg.tad), msg.state_bytes, msg.held_ms, msg.total_ms)


def node_status_from_pb(msg: pb.NodeStatus) -> NodeStatus:
    return NodeStatus(
        msg.name,
        msg.active_atoms,
        msg.stash_entries,
        msg.pid,
        msg.rss_bytes,
        tuple(msg.tags),
        msg.atom_calls,
        msg.draining,
        msg.max_atoms,
        msg.atom_room if msg.HasField("atom_room") else None,
    )
