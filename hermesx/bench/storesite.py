"""`hermesx bench storesite`: checkpoints, activation of dormant atoms, recovery.

Checkpoint latency and throughput come from the storesite alone
(:mod:`storesite.bench`). The rest runs on a private local cluster of three
nodes: many counters are created and passivated (the cluster then holds far
more atoms than are active), a sample is invoked (each first call activates
its atom), and a node hosting an every-call counter is killed with SIGKILL to
time recovery, split into detection (until the node's session expires and it
leaves the name service) and restore (until the atom answers again).
"""

from __future__ import annotations

import random
import signal
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hermesx.core import codec

if TYPE_CHECKING:
    from hermesx.client import Client
    from hermesx.local.cluster import LocalCluster

__all__ = ["run"]

Progress = Callable[[str], None]


def run(
    progress: Progress | None = None, atoms: int = 10_000, session_timeout: float = 2.0
) -> dict[str, float]:
    from hermesx.client import Client
    from hermesx.local.cluster import NodeSpec, private_cluster
    from hermesx.runtime.build import build_examples
    from storesite.bench import run as run_checkpoints

    say = progress or (lambda _m: None)
    say("measuring checkpoints on the storesite alone")
    figures = dict(run_checkpoints())
    wasm = next(p for p in build_examples(quiet=True) if p.stem == "counter").read_bytes()
    nodes = [NodeSpec(f"n{i}") for i in (1, 2, 3)]
    with (
        private_cluster("benchss", nodes, progress=say, session_timeout=session_timeout) as cluster,
        Client(cluster.zk, cluster.name) as client,
    ):
        figures.update(_dormant(client, wasm, atoms, say))
        figures.update(_recovery(client, cluster, wasm, session_timeout, say))
    return figures


def _rss_mib(client: Client) -> float:
    return sum(client.node_status(n).rss_bytes for n in client.nodes()) / 2**20


def _dormant(client: Client, wasm: bytes, count: int, say: Progress) -> dict[str, float]:
    names = [f"dormant-{i}" for i in range(count)]
    rss_start = _rss_mib(client)
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        client.create(wasm, name=name, init=i, checkpoint="on-request", on=f"n{i % 3 + 1}")
        if (i + 1) % 1000 == 0:
            say(f"created {i + 1}/{count} counters")
    created_s = time.perf_counter() - t0
    rss_active = _rss_mib(client)
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        client.passivate(name)
        if (i + 1) % 1000 == 0:
            say(f"passivated {i + 1}/{count}")
    passivated_s = time.perf_counter() - t0
    one = codec.pack(1)
    first, warm = [], []
    sample = random.Random(1).sample(range(count), min(200, count))
    say(f"invoking {len(sample)} dormant counters")
    for i in sample:
        t = time.perf_counter()
        client.invoke(names[i], "incr", one)
        first.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        client.invoke(names[i], "incr", one)
        warm.append((time.perf_counter() - t) * 1000)
    active = sum(client.node_status(n).active_atoms for n in client.nodes())
    return {
        "dormant_atoms": float(count),
        "create_per_s": count / created_s,
        "passivate_per_s": count / passivated_s,
        "activation_first_call_p50_ms": statistics.median(first),
        "activation_first_call_max_ms": max(first),
        "warm_call_p50_ms": statistics.median(warm),
        "activation_over_warm_p50_ratio": statistics.median(first) / statistics.median(warm),
        "active_atoms_after_sample": float(active),
        "nodes_rss_start_mib": rss_start,
        "nodes_rss_all_active_mib": rss_active,
        "nodes_rss_after_passivation_and_sample_mib": _rss_mib(client),
    }


def _recovery(
    client: Client, cluster: LocalCluster, wasm: bytes, session_timeout: float, say: Progress
) -> dict[str, float]:
    detection, restore = [], []
    for round_ in range(3):
        name = f"durable-{round_}"
        victim = f"n{round_ % 3 + 1}"
        client.create(wasm, name=name, on=victim, checkpoint="every-call")
        for _ in range(20):
            client.atom(name).incr(1)
        say(f"killing node {victim} (round {round_ + 1}/3)")
        killed = time.perf_counter()
        cluster.kill(f"node-{victim}", signal.SIGKILL)
        for _ in range(2000):  # bounded: the session expires within seconds
            if victim not in client.nodes():
                break
            time.sleep(0.005)
        detected = time.perf_counter()
        value = client.atom(name).get()
        answered = time.perf_counter()
        assert value == 20, f"recovered counter holds {value}, not 20"
        detection.append((detected - killed) * 1000)
        restore.append((answered - detected) * 1000)
        from hermesx.local.cluster import NodeSpec

        cluster.start_node(NodeSpec(victim))
        cluster.wait_registered(nodes=[victim])
    return {
        "recovery_session_timeout_ms": session_timeout * 1000,
        "recovery_detection_p50_ms": statistics.median(detection),
        "recovery_restore_p50_ms": statistics.median(restore),
        "recovery_total_p50_ms": statistics.median(
            d + r for d, r in zip(detection, restore, strict=True)
        ),
    }
