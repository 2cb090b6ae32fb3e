"""`hermesx bench migrate`: how long a live move takes, and how long calls wait for it.

A private local cluster (ZooKeeper, a storesite, two nodes) holds one atom per
state size (64 KiB, 1 MiB, 16 MiB). Each is moved back and forth while a
client keeps calling it; we report the move's total time, the time the source
held calls (mark moving → committed), and the latency of the calls that
overlapped a move, as p50 and max.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hermesx.core import codec

if TYPE_CHECKING:
    from hermesx.client import Client

__all__ = ["run"]

Progress = Callable[[str], None]

SIZES_KIB = {"64kib": 64, "1mib": 1024, "16mib": 16 * 1024}


def run(progress: Progress | None = None, moves: int = 10) -> dict[str, float]:
    from hermesx.client import Client
    from hermesx.local.cluster import NodeSpec, private_cluster
    from hermesx.runtime.build import build_examples

    say = progress or (lambda _m: None)
    wasm = next(p for p in build_examples(quiet=True) if p.stem == "memhog").read_bytes()
    figures: dict[str, float] = {}
    with (
        private_cluster("benchmig", [NodeSpec("n1"), NodeSpec("n2")], progress=say) as cluster,
        Client(cluster.zk, cluster.name) as client,
    ):
        for label, kib in SIZES_KIB.items():
            say(f"moving a {label} atom {moves} times under calls")
            figures.update(_bench_size(client, wasm, label, kib, moves))
    return figures


def _bench_size(client: Client, wasm: bytes, label: str, kib: int, moves: int) -> dict[str, float]:
    from hermesx.client import Client

    name = f"bench-{label}"
    client.create(wasm, name=name, on="n1", checkpoint="on-request")
    client.atom(name).fill(kib)
    nothing = codec.pack(None)
    calls: list[tuple[float, float]] = []  # (start, end) of every call
    stop = threading.Event()

    def caller() -> None:
        with Client(client.address.zk, client.address.cluster) as own:
            for _ in range(1_000_000):  # bounded; stops when the moves are done
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                own.invoke(name, "pages", nothing)
                calls.append((t0, time.perf_counter()))

    worker = threading.Thread(target=caller)
    worker.start()
    totals, held, windows, state_bytes = [], [], [], 0
    try:
        for i in range(moves):
            time.sleep(0.05)
            t0 = time.perf_counter()
            moved = client.migrate(name, "n2" if i % 2 == 0 else "n1")
            windows.append((t0, time.perf_counter()))
            totals.append(moved.total_ms)
            held.append(moved.held_ms)
            state_bytes = moved.state_bytes
    finally:
        stop.set()
        worker.join(60)
    assert client.atom(name).check() == kib  # the state arrived intact
    overlapping = [
        (end - start) * 1000
        for start, end in calls
        if any(start < w_end and end > w_start for w_start, w_end in windows)
    ]
    out = {
        f"migrate_{label}_total_p50_ms": statistics.median(totals),
        f"migrate_{label}_total_max_ms": max(totals),
        f"migrate_{label}_held_p50_ms": statistics.median(held),
        f"migrate_{label}_held_max_ms": max(held),
        f"migrate_{label}_snapshot_bytes": float(state_bytes),
    }
    if overlapping:
        out[f"migrate_{label}_call_during_move_p50_ms"] = statistics.median(overlapping)
        out[f"migrate_{label}_call_during_move_max_ms"] = max(overlapping)
    return out
