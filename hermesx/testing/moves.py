"""A move run in the background, for tests that act on the cluster while it is under way."""

from __future__ import annotations

import threading

from hermesx.client import Client
from hermesx.core.errors import HermesError

__all__ = ["move_in_background"]


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
