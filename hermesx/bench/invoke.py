"""`hermesx bench invoke`: remote invocation against a bare gRPC echo, in one run.

It starts a private local cluster (ZooKeeper, a storesite, four nodes) and a
bare grpcio unary echo server in its own process, then measures, with the
same client machinery: p50/p99 latency and calls/s with 1 and 8 concurrent
clients for ``counter.incr`` by name and for the echo, their ratios, and the
cost of a first call that has to follow k = 1, 2, 3 forwarding hops.
"""

from __future__ import annotations

import pathlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import TYPE_CHECKING

import grpc

from hermesx.core import codec
from hermesx.rpc import security
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.roles import CLIENT_CERT_NAME, TEST_CERT_NAME
from hermesx.rpc.wire import CHANNEL_OPTIONS, TLSIdentity, add_server_port, open_channel

if TYPE_CHECKING:
    from hermesx.client import Client

__all__ = ["run"]

Progress = Callable[[str], None]

ECHO_NAME = "bench-echo"

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _measure(call: Callable[[], object], seconds: float, threads: int) -> tuple[list[float], float]:
    """Latencies (µs) and calls/s of ``call`` run by ``threads`` callers for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        own = latencies[i]
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            call()
            own.append((time.perf_counter() - t0) * 1e6)

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    flat = [x for lat in latencies for x in lat]
    return flat, len(flat) / elapsed


class _Echo(pbg.SupervisorServicer):
    def Invoke(self, request: pb.InvokeRequest, context: grpc.ServicerContext) -> pb.InvokeReply:
        return pb.InvokeReply(result=request.args)


def serve_echo(tls: TLSIdentity | None) -> None:
    """A bare grpcio unary echo server (run in its own process by the benchmark)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=CHANNEL_OPTIONS)
    pbg.add_SupervisorServicer_to_server(_Echo(), server)
    port = add_server_port(server, "127.0.0.1:0", tls)
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    server.stop(0)


def run(progress: Progress | None = None, seconds: float = 3.0) -> dict[str, float]:
    from hermesx.client import Client
    from hermesx.local.cluster import NodeSpec, private_cluster
    from hermesx.runtime.build import build_examples

    say = progress or (lambda _m: None)
    figures: dict[str, float] = {}
    wasm = next(p for p in build_examples(quiet=True) if p.stem == "counter").read_bytes()
    nodes = [NodeSpec(f"n{i}") for i in range(1, 5)]
    with private_cluster("bench", nodes, progress=say, test_hooks=True) as cluster:
        # The echo speaks the same mutual TLS as the cluster: like for like.
        security.issue_cert(cluster.tls_dir, cluster.name, ECHO_NAME)
        echo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hermesx.bench.invoke",
                "echo-server",
                str(cluster.tls_dir),
                cluster.name,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert echo.stdout is not None
            echo_port = int(echo.stdout.readline())
            identity = TLSIdentity(cluster.tls_dir, CLIENT_CERT_NAME, cluster.name)
            channel = open_channel(f"127.0.0.1:{echo_port}", CHANNEL_OPTIONS, identity)
            echo_stub = pbg.SupervisorStub(channel)
            # The forwarding figures plant stale stashes through a test hook.
            with Client(cluster.zk, cluster.name, cert=TEST_CERT_NAME) as client:
                client.create(wasm, name="bench-counter", on="n4", checkpoint="on-request")
                one = codec.pack(1)
                request = pb.InvokeRequest(guid="x", method="incr", args=one)

                def hx_call() -> object:
                    return client.invoke("bench-counter", "incr", one)

                def echo_call() -> object:
                    return echo_stub.Invoke(request, timeout=10)

                for _ in range(200):  # warm both paths
                    hx_call()
                    echo_call()
                for threads in (1, 8):
                    say(f"measuring with {threads} concurrent client(s)")
                    hx_lat, hx_rate = _measure(hx_call, seconds, threads)
                    echo_lat, echo_rate = _measure(echo_call, seconds, threads)
                    tag = f"c{threads}"
                    figures[f"invoke_{tag}_p50_us"] = statistics.median(hx_lat)
                    figures[f"invoke_{tag}_p99_us"] = _percentile(hx_lat, 0.99)
                    figures[f"invoke_{tag}_calls_per_s"] = hx_rate
                    figures[f"grpc_echo_{tag}_p50_us"] = statistics.median(echo_lat)
                    figures[f"grpc_echo_{tag}_p99_us"] = _percentile(echo_lat, 0.99)
                    figures[f"grpc_echo_{tag}_calls_per_s"] = echo_rate
                    figures[f"remote_over_grpc_{tag}_p50_ratio"] = statistics.median(
                        hx_lat
                    ) / statistics.median(echo_lat)
                    figures[f"remote_over_grpc_{tag}_rate_ratio"] = hx_rate / echo_rate
                say("measuring first calls through forwarding chains")
                figures.update(_forwarding_costs(client))
            channel.close()
        finally:
            if echo.stdin is not None:
                echo.stdin.close()
            echo.wait(10)
    return figures


def _forwarding_costs(client: Client, rounds: int = 60) -> dict[str, float]:
    """First call entering at a node k hops away from the atom (stashes reset each round)."""
    from hermesx.core.identity import TAD

    guid = client.guid_of("bench-counter")
    age = client.locate(guid).age
    one = codec.pack(1)
    chain = ["n1", "n2", "n3", "n4"]  # the atom is on n4
    out: dict[str, float] = {}
    for k in range(0, 4):
        entry = chain[3 - k]
        samples = []
        for _ in range(rounds):
            # Stale pointers along the path: n1 -> n2 -> n3 -> n4 (older ages).
            for i, node in enumerate(chain[:-1]):
                stale = TAD(chain[i + 1], max(age - 3 + i, 0))
                client.node_client.stash_put(client.node_member(node), guid, stale)
            t0 = time.perf_counter()
            client.invoke(guid, "incr", one, via=entry)
            samples.append((time.perf_counter() - t0) * 1e6)
        out[f"first_call_{k}_hops_p50_us"] = statistics.median(samples)
    for k in (1, 2, 3):
        out[f"first_call_{k}_hops_over_direct_ratio"] = (
            out[f"first_call_{k}_hops_p50_us"] / out["first_call_0_hops_p50_us"]
        )
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["echo-server"] and len(sys.argv) in (2, 4):
        tls_dir = sys.argv[2] if len(sys.argv) == 4 else None
        serve_echo(TLSIdentity(pathlib.Path(tls_dir), ECHO_NAME, sys.argv[3]) if tls_dir else None)
    else:
        sys.exit("usage: python -m hermesx.bench.invoke echo-server [TLS_DIR CLUSTER]")
