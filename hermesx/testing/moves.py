"""Moves in tests: one run in the background while the test acts; where an atom has copies."""

from __future__ import annotations

import threading

from hermesx.client import Client
from hermesx.core.errors import HermesError
from hermesx.rpc.proto import hermesx_pb2 as pb

__all__ = ["active_copies", "move_in_background"]


def move_in_background(
    client: Client, target: str, node: str
) -> tuple[threading.Thread, list[str]]:
    """Start ``client.migrate(target, node)`` on a thread.

    Returns the thread and a list that gets ``"moved"`` or ``"failed: <error>"``
    when the move ends.
    """
    outcome: list[str] = []

    def move() -> None:
        try:
            client.migrate(target, node)
            outcome.append("moved")
        except HermesError as exc:
            outcome.append(f"failed: {exc}")

    mover = threading.Thread(target=move, name=f"move-{target}", daemon=True)
    mover.start()
    return mover, outcome


def active_copies(client: Client, guid: str) -> list[str]:
    """The registered nodes that say they hold an active copy of ``guid`` (``Locate``), sorted.

    A move or a recovery is right when this is exactly one node, whatever the
    name service says.
    """
    found = []
    for node in sorted(client.nodes()):
        try:
            reply = client.invoker.node_stub(node).Locate(pb.LocateRequest(guid=guid), timeout=5)
        except Exception:  # a node that is going away holds nothing we can use
            continue
        if reply.active_here:
            found.append(node)
    return found
