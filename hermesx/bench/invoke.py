"""`hermesx bench invoke`: what a call costs, against the floor this machine allows, in one run.

It measures, in one process and one run (docs/PERFORMANCE.md "How to measure"):

* the runtime's in-process call (`hermesx bench runtime`'s ``call_p50_us``);
* the floor: raw TCP ping-pong of 100 bytes (:mod:`hermesx.bench.floor`);
* a bare grpcio unary echo server in its own process, with the cluster's TLS;
* hermesx plain calls (the ``echo`` atom on checkpoint ``on-request``, 100
  bytes each way) through the public :class:`~hermesx.client.Client`, on a
  cluster with mutual TLS (the default) and on one without;
* durable calls (``counter.incr``, checkpoint ``every-call``): 1 client on one
  atom, 8 clients on 8 atoms;
* the disk: 4 KiB write + fdatasync in the storesite's data directory;
* a call whose caller's stash is stale because the atom moved 1, 2 or 3 times
  since its last call (so the call follows 1, 2, 3 forwarding hops), against
  a direct one; and a warm hop: calls entering, back to back, at a node that
  forwards them, against calls entering where the atom runs;

each path as p50/p99 latency with 1 client and calls/s with 8 client threads,
measured side by side in rotating slices (:mod:`hermesx.bench.measure`); then
the goals as ratios of that run (:mod:`hermesx.bench.goals`). Since every
hermesx figure goes through the public client, whatever call path the client
and the nodes take is the one measured.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import TYPE_CHECKING

import grpc

from hermesx.bench.floor import FloorClient, floor_server, port_server
from hermesx.bench.goals import judge
from hermesx.bench.measure import Load, measure_interleaved, percentile
from hermesx.core import codec
from hermesx.core.errors import ConfigurationError
from hermesx.rpc import security
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.roles import CLIENT_CERT_NAME
from hermesx.rpc.wire import CHANNEL_OPTIONS, TLSIdentity, add_server_port, open_channel

if TYPE_CHECKING:
    from hermesx.client import Client
    from hermesx.local.cluster import LocalCluster

__all__ = ["run"]

Progress = Callable[[str], None]

ECHO_NAME = "bench-echo"
# 100 bytes on the wire as the call's argument (msgpack bin 8 of 98 bytes), as for the floor.
PAYLOAD = codec.pack(bytes(98))
DURABLE_ATOMS = 8
NODES = ("n1", "n2", "n3", "n4")
# Pause between moving an atom and timing the next call (see _forwarding_costs).
SETTLE_S = 0.05


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


@contextlib.contextmanager
def _grpc_echo(cluster: LocalCluster) -> Iterator[pbg.SupervisorStub]:
    """The bare gRPC echo in its own process, speaking the cluster's mutual TLS."""
    security.issue_cert(cluster.tls_dir, cluster.name, ECHO_NAME)
    args = ("echo-server", str(cluster.tls_dir), cluster.name)
    with port_server("hermesx.bench.invoke", *args) as port:
        identity = TLSIdentity(cluster.tls_dir, CLIENT_CERT_NAME, cluster.name)
        channel = open_channel(f"127.0.0.1:{port}", CHANNEL_OPTIONS, identity)
        try:
            yield pbg.SupervisorStub(channel)
        finally:
            channel.close()


@contextlib.contextmanager
def _insecure_cluster(beside: LocalCluster, say: Progress) -> Iterator[LocalCluster]:
    """A one-node cluster without TLS beside ``beside``, in the same private home.

    It has a ZooKeeper of its own: a cluster with TLS protects the name
    service's shared root from clients without its secret.
    """
    from hermesx.local.cluster import LocalCluster, NodeSpec

    cluster = LocalCluster(f"{beside.name}plain", secure=False)
    try:
        say("starting a second cluster, without TLS")
        cluster.up([NodeSpec("n1")], progress=say)
        yield cluster
    finally:
        cluster.down()


@contextlib.contextmanager
def _without_tls_env() -> Iterator[None]:
    """$HERMESX_TLS would hand the cluster without TLS a certificate directory: not here."""
    saved = os.environ.pop("HERMESX_TLS", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["HERMESX_TLS"] = saved


def run(
    progress: Progress | None = None,
    seconds: float = 2.0,
    rounds: int = 15,
    slices: int = 10,
) -> dict[str, float]:
    """Every figure of `hermesx bench invoke` and its goals, flat, units in the names.

    ``seconds``: how long each load is measured in all (in ``slices`` turns);
    ``rounds``: samples of each forwarding chain (and x20 disk syncs).
    """
    from hermesx.bench.runtime import run as run_runtime
    from hermesx.client import Client
    from hermesx.local.cluster import NodeSpec, private_cluster
    from hermesx.runtime.build import build_examples

    if not seconds > 0 or not 0 < seconds <= 3600:
        raise ConfigurationError(f"--seconds must be above 0 and at most 3600, not {seconds}")
    if not 1 <= rounds <= 10_000:
        raise ConfigurationError(f"--rounds must be 1 to 10,000, not {rounds}")
    say = progress or (lambda _m: None)
    figures: dict[str, float] = {}
    say("measuring the runtime's in-process call (as `hermesx bench runtime`)")
    figures["runtime_call_p50_us"] = run_runtime()["call_p50_us"]
    modules = {p.stem: p.read_bytes() for p in build_examples(quiet=True)}
    specs = [NodeSpec(n) for n in NODES]
    with (
        _without_tls_env(),
        floor_server() as floor_port,
        private_cluster("bench", specs, progress=say) as cluster,
        _insecure_cluster(cluster, say) as insecure,
        _grpc_echo(cluster) as echo_stub,
        Client(cluster.zk, cluster.name, tls=cluster.tls_dir) as client,
        Client(insecure.zk, insecure.name) as plain_client,
    ):
        floor = FloorClient(floor_port, PAYLOAD)
        say("creating the atoms")
        client.create(modules["echo"], name="bench-echo", on="n4", checkpoint="on-request")
        plain_client.create(modules["echo"], name="bench-echo", on="n1", checkpoint="on-request")
        durable = [
            client.create(
                modules["counter"], name=f"bench-durable-{i}", on="n4", checkpoint="every-call"
            )
            for i in range(DURABLE_ATOMS)
        ]
        # Moved from n3 to n4: n3's stash points at n4, and forwards what enters there.
        warm = client.create(
            modules["echo"], name="bench-hop-warm", on="n3", checkpoint="on-request"
        )
        client.migrate(warm, "n4")
        one = codec.pack(1)
        request = pb.InvokeRequest(guid="x", method="echo", args=PAYLOAD)
        loads: list[Load] = []
        for threads in (1, 8):
            tag = f"c{threads}"
            loads += [
                Load(f"tcp_floor_{tag}", lambda _i: floor.call(), threads),
                Load(
                    f"grpc_echo_{tag}",
                    lambda _i: echo_stub.Invoke(request, timeout=10),
                    threads,
                ),
                Load(
                    f"invoke_{tag}",
                    lambda _i: client.invoke("bench-echo", "echo", PAYLOAD),
                    threads,
                ),
                Load(
                    f"invoke_insecure_{tag}",
                    lambda _i: plain_client.invoke("bench-echo", "echo", PAYLOAD),
                    threads,
                ),
                Load(
                    f"durable_{tag}",
                    lambda i: client.invoke(durable[i], "incr", one),
                    threads,
                ),
            ]
        loads += [
            Load("hop_c1", lambda _i: client.invoke(warm, "echo", PAYLOAD, via="n3")),
            Load("hop_direct_c1", lambda _i: client.invoke(warm, "echo", PAYLOAD, via="n4")),
        ]
        try:
            figures.update(measure_interleaved(loads, seconds, slices=slices, progress=say))
        finally:
            floor.close()
        # A warm hop: what entering one node away adds to a warm call.
        hop = figures["forwarding_hop_warm_us"] = (
            figures["hop_c1_p50_us"] - figures["hop_direct_c1_p50_us"]
        )
        figures["hop_warm_over_plain_ratio"] = hop / figures["invoke_c1_p50_us"]
        for tag in ("c1", "c8"):
            figures[f"remote_over_grpc_{tag}_p50_ratio"] = (
                figures[f"invoke_{tag}_p50_us"] / figures[f"grpc_echo_{tag}_p50_us"]
            )
            figures[f"remote_over_grpc_{tag}_rate_ratio"] = (
                figures[f"invoke_{tag}_calls_per_s"] / figures[f"grpc_echo_{tag}_calls_per_s"]
            )
        say("measuring the disk's 4 KiB write + fdatasync")
        figures.update(_disk_sync(cluster.dir / "storesite-s1", rounds * 20))
        with Client(cluster.zk, cluster.name, tls=cluster.tls_dir) as mover:
            figures.update(_forwarding_costs(client, mover, modules["echo"], rounds, say))
        # The cold hop over the warm plain call: the goal's ratio before the seventh round
        # (docs/PERFORMANCE.md), a figure now; the goal compares like with like.
        figures["hop_cold_over_plain_ratio"] = (
            figures["forwarding_hop_us"] / figures["invoke_c1_p50_us"]
        )
    judge(figures)
    return figures


def _disk_sync(directory: pathlib.Path, samples: int) -> dict[str, float]:
    """4 KiB pwrite + fdatasync into a file of the storesite's data directory, already sized."""
    path = directory / "bench-disk-sync"
    block = os.urandom(4096)
    slots = 256
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # Sized first (as an LMDB map file is), so a sync writes data, not a growing length.
        os.pwrite(fd, bytes(4096 * slots), 0)
        os.fsync(fd)
        took: list[float] = []
        for i in range(samples):
            t0 = time.perf_counter_ns()
            os.pwrite(fd, block, 4096 * (i % slots))
            os.fdatasync(fd)
            took.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {
        "disk_sync_4k_p50_us": statistics.median(took),
        "disk_sync_4k_p99_us": percentile(took, 0.99),
    }


def _forwarding_costs(
    client: Client, mover: Client, echo_wasm: bytes, rounds: int, say: Progress
) -> dict[str, float]:
    """A call whose caller last saw the atom k moves ago: it follows k forwarding hops.

    ``mover`` (another client) moves the atom k times along distinct nodes;
    ``client`` still holds the atom's old location in its stash, so its call
    enters there and each node on the way forwards it one step. Round 0 warms
    the nodes' channels and checks, by the call's trace, that it took k hops.
    """
    guid = client.create(echo_wasm, name="bench-hops", on=NODES[0], checkpoint="on-request")
    client.invoke(guid, "echo", PAYLOAD)
    here = NODES[0]
    samples: dict[int, list[float]] = {k: [] for k in range(4)}
    for round_ in range(rounds + 1):
        if round_ % 5 == 0:
            say(f"measuring calls through forwarding chains, round {round_ + 1}/{rounds + 1}")
        for k in range(4):
            start = NODES.index(here)
            path = [NODES[(start + j) % len(NODES)] for j in range(1, k + 1)]
            for node in path:
                mover.migrate(guid, node)
            # What a move leaves to do in the background (checkpoints, pointers) is done by
            # the time a caller comes back in earnest; the direct call waits as long too.
            time.sleep(SETTLE_S)
            traced = round_ == 0
            t0 = time.perf_counter_ns()
            outcome = client.invoke(guid, "echo", PAYLOAD, trace=traced)
            took = (time.perf_counter_ns() - t0) / 1000
            here = path[-1] if path else here
            if outcome.tad is not None and outcome.tad.node != here:
                raise RuntimeError(f"the call ran on {outcome.tad.node}, not on {here}")
            if traced:
                forwards = sum(1 for hop in outcome.trace if hop.event == "forward")
                if forwards != k:
                    raise RuntimeError(f"a call after {k} moves took {forwards} forwarding hops")
            else:
                samples[k].append(took)
    out = {f"first_call_{k}_hops_p50_us": statistics.median(samples[k]) for k in range(4)}
    direct = out["first_call_0_hops_p50_us"]
    for k in (1, 2, 3):
        out[f"first_call_{k}_hops_over_direct_ratio"] = out[f"first_call_{k}_hops_p50_us"] / direct
    # The dearest hop: per-hop cost of each chain over the direct call, the largest.
    out["forwarding_hop_us"] = max(
        (out[f"first_call_{k}_hops_p50_us"] - direct) / k for k in (1, 2, 3)
    )
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["echo-server"] and len(sys.argv) in (2, 4):
        tls_dir = sys.argv[2] if len(sys.argv) == 4 else None
        serve_echo(TLSIdentity(pathlib.Path(tls_dir), ECHO_NAME, sys.argv[3]) if tls_dir else None)
    else:
        sys.exit("usage: python -m hermesx.bench.invoke echo-server [TLS_DIR CLUSTER]")
