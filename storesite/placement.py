"""Where a dormant or recovered atom goes (docs/DESIGN.md §4 step 4, §6).

The policy: among the live nodes that carry every tag the atom asks for,
prefer the least loaded (fewest active atoms, as the node's Status reports),
ties broken by name so the choice is predictable. Loads are cached briefly:
a burst of recoveries must not ask every node for its status once per atom.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from hermesx.rpc.node_client import Member

__all__ = ["LoadCache", "Member", "rank_nodes"]

log = logging.getLogger(__name__)


def rank_nodes(
    nodes: Mapping[str, Member],
    tags: Iterable[str],
    loads: Mapping[str, int | None],
    *,
    exclude: Iterable[str] = (),
) -> list[Member]:
    """Candidate nodes for an atom, best first.

    Nodes without every tag in ``tags`` or named in ``exclude`` are left out;
    nodes whose load is unknown (``None``: they did not answer) go last.
    """
    wanted = set(tags)
    skip = set(exclude)
    fitting = [
        member
        for name, member in nodes.items()
        if name not in skip and wanted.issubset(member.tags)
    ]

    def key(member: Member) -> tuple[int, int, str]:
        load = loads.get(member.name)
        return (1, 0, member.name) if load is None else (0, load, member.name)

    return sorted(fitting, key=key)


class LoadCache:
    """Active-atom counts per node, refreshed at most every ``ttl`` seconds.

    ``fetch`` asks one node for its load and returns None when it cannot
    answer. :meth:`bump` counts an atom just placed on a node, so a burst of
    placements spreads without waiting for the next refresh.
    """

    def __init__(self, fetch: Callable[[Member], int | None], *, ttl: float = 1.0) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._lock = threading.Lock()
        self._loads: dict[str, tuple[float, int | None]] = {}

    def loads(self, members: Iterable[Member]) -> dict[str, int | None]:
        now = time.monotonic()
        result: dict[str, int | None] = {}
        for member in members:
            with self._lock:
                cached = self._loads.get(member.name)
            if cached is not None and now - cached[0] < self._ttl:
                result[member.name] = cached[1]
                continue
            load = self._fetch(member)
            with self._lock:
                self._loads[member.name] = (time.monotonic(), load)
            result[member.name] = load
        return result

    def bump(self, node: str) -> None:
        with self._lock:
            cached = self._loads.get(node)
            if cached is not None and cached[1] is not None:
                self._loads[node] = (cached[0], cached[1] + 1)

    def forget(self, node: str) -> None:
        with self._lock:
            self._loads.pop(node, None)
