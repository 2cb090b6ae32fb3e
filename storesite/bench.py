"""Checkpoint benchmark of the storesite (``hermesx bench storesite``, docs/DESIGN.md §6, §8).

Durable checkpoint latency (p50 / p99, µs) and throughput (checkpoints/s)
for 4 KiB and 64 KiB snapshots, first directly on the LMDB store, then
through gRPC on loopback (one caller, and four callers on four atoms), so
the cost of the wire shows next to the cost of the disk.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import threading
import time
from collections.abc import Callable, Mapping

from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import snapshot_checksum
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.storesite_client import StoresiteClient
from storesite.placement import Member
from storesite.records import Provenance
from storesite.server import StoresiteServer
from storesite.service import Storesite
from storesite.store import AtomStore

__all__ = ["run"]

SIZES = {"4k": 4 * 1024, "64k": 64 * 1024}
SID = "bench"


class _NoNodes:
    """A directory with no nodes: the benchmark never activates anything."""

    def nodes(self) -> Mapping[str, Member]:
        return {}

    def live_incarnation(self, node: str) -> str | None:
        return None

    def storesite_address(self, sid: str) -> str:
        return ""

    def set_home(self, guid: str, sid: str) -> None:
        pass

    def home(self, guid: str) -> str:
        return SID


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _measure(put: Callable[[int], object], count: int) -> tuple[float, float, float]:
    """Latency p50, p99 (µs) and throughput (per s) of ``count`` sequential puts."""
    put(0)  # warm up: first write grows the file, first call opens the channel
    samples: list[float] = []
    started = time.perf_counter()
    for seq in range(1, count + 1):
        t0 = time.perf_counter()
        put(seq)
        samples.append((time.perf_counter() - t0) * 1e6)
    elapsed = time.perf_counter() - started
    return _percentile(samples, 0.5), _percentile(samples, 0.99), count / elapsed


def _register(register: Callable[[str, pb.AtomMeta, TAD, bytes], object]) -> str:
    guid = str(GUID.new(SID))
    register(guid, pb.AtomMeta(name=f"bench-{guid[-8:]}"), TAD("bench-node", 1), b"")
    return guid


def run(count: int = 300, *, data_dir: pathlib.Path | None = None) -> dict[str, float]:
    """Run the benchmark and return figure name → number (names carry their unit)."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hermesx-bench-", dir=data_dir) as tmp:
        store = AtomStore(SID, pathlib.Path(tmp) / "data", init=True, max_checkpoint_bytes=1 << 20)
        site = Storesite(store, _NoNodes())
        server = StoresiteServer(site, "127.0.0.1:0")
        try:
            address = server.start()
            client = StoresiteClient(address, sid=SID)
            try:
                for label, size in SIZES.items():
                    figures.update(_bench_size(store, client, label, size, count))
                figures["grpc_over_store_4k_p50_ratio"] = (
                    figures["grpc_4k_p50_us"] / figures["store_4k_p50_us"]
                )
            finally:
                client.close()
        finally:
            server.stop(0)
            site.close()
            store.close()
    return figures


def _bench_size(
    store: AtomStore, client: StoresiteClient, label: str, size: int, count: int
) -> dict[str, float]:
    snapshot = os.urandom(size)
    tad = TAD("bench-node", 1)
    local = _register(store.register_atom)
    remote = _register(client.register_atom)
    figures: dict[str, float] = {}
    # As a node sends it: with the checksum it computed, which the storesite checks.
    checksum = snapshot_checksum(snapshot)
    check = Provenance(checksum=checksum)
    for via, put in (
        ("store", lambda seq: store.put_checkpoint(local, tad, seq, snapshot, check)),
        (
            "grpc",
            lambda seq: client.put_checkpoint(remote, tad, snapshot, seq, checksum=checksum),
        ),
    ):
        p50, p99, rate = _measure(put, count)
        figures[f"{via}_{label}_p50_us"] = p50
        figures[f"{via}_{label}_p99_us"] = p99
        figures[f"{via}_{label}_per_s"] = rate
    figures[f"grpc_{label}_4callers_per_s"] = _parallel_rate(client, snapshot, count)
    return figures


def _parallel_rate(client: StoresiteClient, snapshot: bytes, count: int, callers: int = 4) -> float:
    """Checkpoints/s with ``callers`` threads, each on its own atom."""
    guids = [_register(client.register_atom) for _ in range(callers)]
    per_caller = max(1, count // callers)

    def work(guid: str) -> None:
        for seq in range(1, per_caller + 1):
            client.put_checkpoint(
                guid, TAD("bench-node", 1), snapshot, seq, checksum=snapshot_checksum(snapshot)
            )

    threads = [threading.Thread(target=work, args=(g,)) for g in guids]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return per_caller * callers / (time.perf_counter() - started)


def _print_table(figures: Mapping[str, float]) -> None:
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:12.1f}")


if __name__ == "__main__":
    import sys

    results = run()
    if "--json" in sys.argv[1:]:
        print(json.dumps(results))
    else:
        _print_table(results)
