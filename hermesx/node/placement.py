"""Placement policies of atoms: where an atom moves by itself (docs/DESIGN.md §4).

An atom's metadata names its policy: none (it stays until moved), or
``follow-caller``: after every FOLLOW_WINDOW calls it moves to the node that
made at least FOLLOW_SHARE of them (calls from atoms there). The move itself
is requested here and made by the node after the call that decided it.
"""

from __future__ import annotations

import logging

from hermesx.core.errors import ConfigurationError
from hermesx.node.catalog import ActiveAtom
from hermesx.routing.naming import Naming
from hermesx.rpc.proto import hermesx_pb2 as pb

__all__ = ["FOLLOW_CALLER", "PLACEMENTS", "FollowCaller", "check_placement"]

log = logging.getLogger(__name__)

FOLLOW_CALLER = "follow-caller"
FOLLOW_WINDOW = 20
FOLLOW_SHARE = 0.75
PLACEMENTS = ("", FOLLOW_CALLER)


def check_placement(meta: pb.AtomMeta) -> None:
    """Refuse a placement policy this node does not know."""
    if meta.placement not in PLACEMENTS:
        raise ConfigurationError(
            f"placement {meta.placement!r} is not one of: none, {FOLLOW_CALLER}"
        )


class FollowCaller:
    """Placement "follow-caller" on node ``node``."""

    def __init__(self, node: str, naming: Naming) -> None:
        self._node = node
        self._naming = naming

    def note_call(self, active: ActiveAtom, caller_node: str) -> None:
        """Count a call from ``caller_node``; at the window's end, maybe request a move."""
        active.callers[caller_node] += 1
        if active.callers.total() < FOLLOW_WINDOW:
            return
        node, calls = active.callers.most_common(1)[0]
        active.callers.clear()
        if (
            node
            and node != self._node
            and calls >= FOLLOW_SHARE * FOLLOW_WINDOW
            and active.move_request is None
            and node in self._naming.nodes()
        ):
            log.info(
                "atom %s follows its caller: %d of %d calls from %s",
                active.guid,
                calls,
                FOLLOW_WINDOW,
                node,
            )
            active.move_request = node
