"""Conversions between hermesx's own types and their wire messages."""

from __future__ import annotations

from hermesx.core.identity import TAD
from hermesx.rpc.proto import hermesx_pb2 as pb

__all__ = ["tad_from_pb", "tad_of", "tad_to_pb"]


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
