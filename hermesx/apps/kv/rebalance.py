"""Rebalancing a KV store is mobility: shards move toward even load (docs/DESIGN.md §11).

The load of a node is the calls per second its shards serve, measured from
each shard's own counter (``stats``) over a window. Moves are chosen
greedily: while a shard on the busiest node is lighter than the gap between
the busiest and the idlest node, the one nearest half the gap moves there.
Clients keep calling throughout: a move is an ordinary migration (§5), so a
call in flight is forwarded or retried, never failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hermesx.apps.kv.store import KVStore
from hermesx.core.errors import ConfigurationError

__all__ = ["Move", "rebalance", "shard_rates"]

# Every shard weighs at least this: with no load at all, shards spread by count.
_FLOOR = 0.01


@dataclass(frozen=True, slots=True)
class Move:
    """One shard moved: its index, GUID, the nodes, and its load (calls/s) when chosen."""

    index: int
    guid: str
    source: str
    target: str
    rate: float


def shard_rates(store: KVStore, window: float) -> dict[str, float]:
    """Calls per second each shard served over ``window`` seconds, by GUID."""
    before = store.shard_stats()
    started = time.monotonic()
    time.sleep(window)
    after = store.shard_stats()
    elapsed = max(time.monotonic() - started, 1e-3)
    return {guid: (after[guid] - before[guid]) / elapsed for guid in store.shards}


def rebalance(
    store: KVStore,
    *,
    window: float = 1.0,
    max_moves: int | None = None,
    nodes: Sequence[str] | None = None,
    on_move: Callable[[Move], None] | None = None,
) -> list[Move]:
    """Move ``store``'s shards toward even load over ``nodes`` (all live ones); the moves made."""
    if window <= 0 or window > 60:
        raise ConfigurationError(f"rebalance window must be in (0, 60] seconds, not {window}")
    client = store.client
    targets = sorted(nodes) if nodes else sorted(client.nodes())
    if not targets:
        raise ConfigurationError("no live node to balance over")
    rates = shard_rates(store, window)
    where = {guid: client.locate(guid).node for guid in store.shards}
    load = dict.fromkeys(targets, 0.0)
    for guid, node in where.items():
        load[node] = load.get(node, 0.0) + rates[guid] + _FLOOR
    moves: list[Move] = []
    limit = len(store.shards) if max_moves is None else max_moves
    while len(moves) < limit:
        hot = max(load, key=lambda n: load[n])
        cold = min(targets, key=lambda n: load[n])
        gap = load[hot] - load[cold]
        candidates = [g for g, n in where.items() if n == hot and rates[g] + _FLOOR < gap]
        if not candidates:
            break
        guid = min(candidates, key=lambda g: abs(rates[g] + _FLOOR - gap / 2))
        client.migrate(guid, cold)
        move = Move(store.shards.index(guid), guid, hot, cold, rates[guid])
        moves.append(move)
        if on_move is not None:
            on_move(move)
        where[guid] = cold
        load[hot] -= rates[guid] + _FLOOR
        load[cold] += rates[guid] + _FLOOR
    return moves
