"""Consistent hashing of keys onto the shards of a KV store (docs/DESIGN.md §11).

Every shard owns :data:`VNODES` points on a 64-bit ring, at the hash
(:func:`ring_hash`: FNV-1a, then MurmurHash3's 64-bit finalizer, which
spreads a change in the last byte over the high bits FNV-1a leaves alike) of
``"<store>/<index>#<vnode>"``; a key belongs to the shard owning the first
point at or after the key's own hash. The ring is a function of the store's
name and shard count only, both kept in the name service (the shards'
aliases), so every client — and an atom, with the same 20 lines of C —
computes the same placement without asking anyone.
"""

from __future__ import annotations

import bisect

__all__ = ["VNODES", "Ring", "ring_hash"]

VNODES = 64
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def ring_hash(data: bytes) -> int:
    """The ring position of ``data``: 64-bit FNV-1a, finalized as MurmurHash3's fmix64."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK
    return h ^ (h >> 33)


class Ring:
    """The placement of keys on ``shards`` shards of the store ``store``."""

    def __init__(self, store: str, shards: int, vnodes: int = VNODES) -> None:
        self.store = store
        self.shards = shards
        points = sorted(
            (ring_hash(f"{store}/{index}#{vnode}".encode()), index)
            for index in range(shards)
            for vnode in range(vnodes)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [index for _, index in points]

    def shard_of(self, key: str) -> int:
        """The index of the shard holding ``key``."""
        at = bisect.bisect_left(self._hashes, ring_hash(key.encode()))
        return self._owners[at % len(self._owners)]
