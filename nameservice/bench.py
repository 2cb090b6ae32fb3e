"""Name service benchmark (``hermesx bench naming``; docs/DESIGN.md §7, §8).

Measures what invocation pays for naming: a cached exact lookup (a dict get,
no round trip), an uncached one (one ZooKeeper read), and RE2 pattern lookups
over 10,000 and 100,000 aliases of one scope, for ``any`` and ``all``. Every
pattern lookup uses a pattern not seen before, so the per-pattern result cache
does not flatter the figure; the cached repeat is reported separately.

Creating 100,000 aliases means 200,000 znodes; they are written in
multi-operation transactions, several in flight at once, and the set-up time
is reported too. With ``hosts=None`` the benchmark runs its own ZooKeeper.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator

from kazoo.client import KazooClient

from nameservice.client import NameService
from nameservice.tree import ROOT
from nameservice.zookeeper import ZooKeeperServer

__all__ = ["run"]

log = logging.getLogger(__name__)

_TXN_OPS = 1000
_IN_FLIGHT = 8
_GUID = "bench:" + "0" * 32


def _alias(i: int) -> str:
    return f"a-{i:06d}"


def _guid(i: int) -> str:
    return f"bench:{i:032x}"


def _timed_us(call: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def _batched(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write_in_transactions(client: KazooClient, paths: list[str], *, delete: bool) -> None:
    """Create (or delete) ``paths`` in order, ``_TXN_OPS`` per transaction, a few in flight."""
    in_flight = []
    for chunk in _batched(paths, _TXN_OPS):
        txn = client.transaction()
        for path in chunk:
            if delete:
                txn.delete(path)
            else:
                txn.create(path, b"")
        in_flight.append(txn.commit_async())
        if len(in_flight) >= _IN_FLIGHT:
            in_flight.pop(0).get(timeout=60)
    for pending in in_flight:
        pending.get(timeout=60)


def _alias_paths(cluster: str, scope: str, count: int) -> tuple[list[str], list[str]]:
    scope_dir = f"{ROOT}/{cluster}/aliases/{scope}"
    dirs = [f"{scope_dir}/{_alias(i)}" for i in range(count)]
    leaves = [f"{d}/{_guid(i)}" for i, d in enumerate(dirs)]
    return dirs, leaves


def _pattern_figures(service: NameService, scope: str, count: int) -> dict[str, float]:
    label = f"{count // 1000}k"
    groups = count // 100  # each "a-NNNN.*" prefix matches 100 aliases
    prefixes = [f"a-{(g * 7919) % groups:04d}" for g in range(20)]
    any_ms = [
        us / 1000
        for us in _timed_us_each(lambda p: service.lookup(p + ".*", scope=scope), prefixes)
    ]
    all_ms = [
        us / 1000
        for us in _timed_us_each(
            lambda p: service.lookup(p + "[0-9]*", scope=scope, all=True), prefixes
        )
    ]
    # No alias matches: the whole buffer is scanned.
    miss_ms = [
        us / 1000
        for us in _timed_us_each(
            lambda p: service.lookup(p + "x.*", scope=scope, all=True), prefixes
        )
    ]
    repeat_us = _timed_us(lambda: service.lookup("a-0001.*", scope=scope, all=True), 200)
    start = time.perf_counter()
    everything = service.lookup(".*", scope=scope, all=True)
    every_ms = (time.perf_counter() - start) * 1000
    assert len(everything) == count, f"expected {count} GUIDs, got {len(everything)}"
    return {
        f"pattern_any_{label}_aliases_p50_ms": statistics.median(any_ms),
        f"pattern_all_{label}_aliases_p50_ms": statistics.median(all_ms),
        f"pattern_no_match_{label}_aliases_p50_ms": statistics.median(miss_ms),
        f"pattern_all_every_{label}_aliases_ms": every_ms,
        f"pattern_repeat_{label}_aliases_p50_us": statistics.median(repeat_us),
    }


def _timed_us_each(call: Callable[[str], object], arguments: list[str]) -> list[float]:
    samples = []
    for argument in arguments:
        start = time.perf_counter_ns()
        call(argument)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def run(hosts: str | None = None) -> dict[str, float]:
    """Run the naming benchmark; figure name (with its unit) -> number."""
    server: ZooKeeperServer | None = None
    if hosts is None:
        # 220,000 znodes with their watches do not fit the default 128 MiB heap.
        server = ZooKeeperServer(heap_mb=768)
        server.start()
        hosts = server.connect_string
    cluster = f"bench-{os.getpid()}-{int(time.time())}"
    writer = KazooClient(hosts=hosts, timeout=10.0)
    figures: dict[str, float] = {}
    created: list[tuple[list[str], list[str]]] = []
    try:
        writer.start(timeout=10.0)
        with NameService(hosts, cluster, timeout=30.0) as service:
            service.bind("bench-target", _GUID)
            service.resolve("bench-target")
            cached = _timed_us(lambda: service.resolve("bench-target"), 20_000)
            figures["resolve_cached_p50_us"] = statistics.median(cached)
            figures["resolve_cached_p99_us"] = sorted(cached)[int(len(cached) * 0.99)]

            names = [f"n-{i:04d}" for i in range(300)]
            for i, name in enumerate(names):
                service.bind(name, _guid(i))
            with NameService(hosts, cluster) as cold:
                uncached = _timed_us_each(cold.resolve, names)
            figures["resolve_uncached_p50_us"] = statistics.median(uncached)

            for count in (10_000, 100_000):
                scope = f"s{count}"
                dirs, leaves = _alias_paths(cluster, scope, count)
                created.append((dirs, leaves))
                start = time.perf_counter()
                writer.ensure_path(f"{ROOT}/{cluster}/aliases/{scope}")
                _write_in_transactions(writer, dirs, delete=False)
                _write_in_transactions(writer, leaves, delete=False)
                label = f"{count // 1000}k"
                figures[f"setup_{label}_aliases_s"] = time.perf_counter() - start
                start = time.perf_counter()
                assert len(service.aliases(scope)) == count
                figures[f"warm_cache_{label}_aliases_s"] = time.perf_counter() - start
                figures.update(_pattern_figures(service, scope, count))
        if server is None:
            # Someone else's ZooKeeper: leave it as we found it.
            for dirs, leaves in created:
                _write_in_transactions(writer, leaves, delete=True)
                _write_in_transactions(writer, dirs, delete=True)
            writer.delete(f"{ROOT}/{cluster}", recursive=True)
    finally:
        writer.stop()
        writer.close()
        if server is not None:
            server.stop()
    return figures


if __name__ == "__main__":
    for figure, value in run().items():
        print(f"{figure:45s} {value:12.3f}")
