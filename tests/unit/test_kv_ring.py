"""The KV store's placement ring and the bench's key law (docs/DESIGN.md §11)."""

from __future__ import annotations

import random
from collections import Counter

from hermesx.apps.kv.ring import VNODES, Ring, ring_hash
from hermesx.bench.kv import Zipf


def test_ring_hash_is_fnv1a_finished_by_fmix64() -> None:
    # Fixed values: atoms/kvclient.c computes the same function, and a store's
    # placement must not change under its clients between releases.
    assert ring_hash(b"") == 0xEFD01F60BA992926
    assert ring_hash(b"user:007") == ring_hash(b"user:007")
    assert ring_hash(b"user:007") != ring_hash(b"user:008")


def test_every_shard_gets_a_fair_part_of_the_keys() -> None:
    ring = Ring("s", 8)
    counts = Counter(ring.shard_of(f"key-{i}") for i in range(20_000))
    assert sorted(counts) == list(range(8))
    # 64 points a shard keep each within a factor of two of the mean.
    assert max(counts.values()) < 2 * min(counts.values())


def test_the_placement_depends_on_the_store_and_the_count_only() -> None:
    keys = [f"k{i}" for i in range(500)]
    # Two rings made apart from each other (a ring is built once, then asked per key).
    first, again, other = Ring("a", 4), Ring("a", 4), Ring("b", 4)
    assert [first.shard_of(k) for k in keys] == [again.shard_of(k) for k in keys]
    assert [first.shard_of(k) for k in keys] != [other.shard_of(k) for k in keys]
    single = Ring("a", 1)
    assert {single.shard_of(k) for k in keys} == {0}
    assert len(Ring("a", 3)._hashes) == 3 * VNODES


def test_zipfian_keys_are_skewed_and_in_range() -> None:
    zipf = Zipf(1000)
    rng = random.Random(1)
    draws = Counter(zipf.next(rng) for _ in range(20_000))
    assert all(0 <= k < 1000 for k in draws)
    top = draws.most_common(10)
    # The ten hottest keys take far more than the 1% a uniform choice gives them.
    assert sum(n for _, n in top) > 0.2 * 20_000
