"""Where a dormant or recovered atom goes (docs/DESIGN.md §4 step 4, §6).

The policy is :func:`hermesx.rpc.ranking.rank_nodes` (tags, in service, then
least loaded), the one a draining node uses too. Loads are cached briefly:
a burst of recoveries must not ask every node for its status once per atom.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from hermesx.rpc.node_client import Member
from hermesx.rpc.ranking import rank_nodes

__all__ = ["LoadCache", "Member", "rank_nodes"]

log = logging.getLogger(__name__)


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
