"""`hermesx bench kv`: YCSB-style workloads on the hermesx KV store and on a real Redis, in one run.

Workload A is 50% reads / 50% updates, B 95% / 5%, over ``keys`` keys
chosen by a scrambled zipfian law (YCSB's, constant 0.99), from ``threads``
client threads, each with a connection of its own, on stores of ``shards``
shards (16 by default: a shard serves one call at a time, and a durable
shard's checkpoint holds its whole state, so smaller shards go faster).
Measured on the same machine, each hermesx phase right beside its Redis
counterpart (so a ratio compares moments of the same load): the hermesx KV
store *plain* (shards checkpoint on request only) against Redis (Debian's
``redis-server``, started here on 127.0.0.1 in a temporary directory and
always stopped) with ``appendonly no``, and *durable* (a checkpoint in every
call that changes a shard) against Redis with ``appendonly yes`` +
``appendfsync always``; then the transactional KV's transfers (the bank
workload without its auditor).
Figures: ops/s and p50/p99 (µs) of each, the ratios hermesx / Redis,
committed transfers/s and the abort rate.
"""

from __future__ import annotations

import bisect
import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hermesx.core.errors import ConfigurationError

if TYPE_CHECKING:
    from hermesx.client import Client

__all__ = ["run"]

Progress = Callable[[str], None]

ZIPF_CONSTANT = 0.99


class Zipf:
    """Scrambled zipfian ranks over ``n`` items: hot items spread over the key space."""

    def __init__(self, n: int, seed: int = 42) -> None:
        total = 0.0
        self._cdf = []
        for rank in range(1, n + 1):
            total += 1.0 / rank**ZIPF_CONSTANT
            self._cdf.append(total)
        self._total = total
        self._order = list(range(n))
        random.Random(seed).shuffle(self._order)

    def next(self, rng: random.Random) -> int:
        at = bisect.bisect_left(self._cdf, rng.random() * self._total)
        return self._order[min(at, len(self._order) - 1)]


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    read_share: float


WORKLOADS = (Workload("A", 0.50), Workload("B", 0.95))

# One (get, put) pair per client thread.
Ops = list[tuple[Callable[[str], object], Callable[[str, bytes], object]]]


def _key(i: int) -> str:
    return f"user{i:08d}"


def _measure(
    ops: Ops,
    workload: Workload,
    zipf: Zipf,
    keys: int,
    value: bytes,
    seconds: float,
) -> dict[str, float]:
    """ops/s and p50/p99 µs of ``workload`` with one (get, put) pair per thread."""
    latencies: list[list[float]] = [[] for _ in ops]
    errors: list[BaseException] = []
    stop = time.monotonic() + seconds

    def worker(index: int) -> None:
        get, put = ops[index]
        rng = random.Random(index)
        own = latencies[index]
        try:
            while time.monotonic() < stop:
                key = _key(zipf.next(rng) % keys)
                t0 = time.perf_counter()
                if rng.random() < workload.read_share:
                    get(key)
                else:
                    put(key, value)
                own.append((time.perf_counter() - t0) * 1e6)
        except BaseException as exc:  # reported below: a benchmark does not hide failures
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(ops))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    flat = sorted(x for lat in latencies for x in lat)
    if not flat:
        return {"ops_per_s": 0.0, "p50_us": 0.0, "p99_us": 0.0}
    return {
        "ops_per_s": len(flat) / elapsed,
        "p50_us": flat[len(flat) // 2],
        "p99_us": flat[min(len(flat) - 1, int(0.99 * len(flat)))],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(fsync_always: bool) -> Iterator[int]:
    """A private redis-server on 127.0.0.1 in a temporary directory; its port. Always stopped."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigurationError("redis-server is not installed (apt-get install redis-server)")
    import redis

    with tempfile.TemporaryDirectory(prefix="hermesx-redis-") as home:
        port = _free_port()
        argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", home]
        argv += ["--save", "", "--daemonize", "no", "--logfile", f"{home}/redis.log"]
        if fsync_always:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            probe = redis.Redis(host="127.0.0.1", port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    probe.ping()
                    break
                except redis.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise ConfigurationError(
                            f"redis-server did not start on port {port} (see {home}/redis.log)"
                        ) from None
                    time.sleep(0.05)
            probe.close()
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _redis_ops(
    stack: contextlib.ExitStack, fsync_always: bool, threads: int, keys: int, value: bytes
) -> Ops:
    """A loaded redis-server (stopped with ``stack``) and one connection per thread."""
    import redis

    port = stack.enter_context(redis_server(fsync_always))
    conns = [redis.Redis(host="127.0.0.1", port=port) for _ in range(threads)]
    for conn in conns:
        stack.callback(conn.close)
    pipe = conns[0].pipeline(transaction=False)
    for i in range(keys):
        pipe.set(_key(i), value)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return [(c.get, c.set) for c in conns]


def _kv_ops(
    clients: list[Client], name: str, durable: bool, shards: int, keys: int, value: bytes
) -> Ops:
    """A loaded KV store and one client per thread."""
    from hermesx.apps.kv import KVStore

    store = KVStore.create(clients[0], name, shards, durable=durable)
    store.put_many({_key(i): value for i in range(keys)})
    stores = [KVStore(c, name, store.shards) for c in clients]
    return [(s.get, s.put) for s in stores]


def _bench_transfers(
    clients: list[Client], *, shards: int, seconds: float, threads: int
) -> dict[str, float]:
    from hermesx.apps.kv import KVStore
    from hermesx.apps.kv.bank import Bank

    store = KVStore.create(clients[0], "bench-bank", shards, durable=True)
    bank = Bank(store, accounts=1000)
    bank.open_accounts()
    pool = iter(clients)

    def connect() -> contextlib.AbstractContextManager[Client]:
        return contextlib.nullcontext(next(pool))  # the clients are closed by the caller

    tally = bank.run(connect, workers=threads, seconds=seconds, audit=False)
    figures = tally.as_dict()
    return {"committed_per_s": figures["committed_per_s"], "abort_rate": figures["abort_rate"]}


def run(
    progress: Progress | None = None,
    *,
    keys: int = 10_000,
    threads: int = 8,
    seconds: float = 4.0,
    shards: int = 16,
    nodes: int = 2,
    value_bytes: int = 100,
) -> dict[str, float]:
    """The figures of one run (see the module's docstring)."""
    from hermesx.client import Client
    from hermesx.local.cluster import NodeSpec, private_cluster

    if not 1 <= keys <= 1_000_000 or not 1 <= threads <= 64 or not 0 < seconds <= 600:
        raise ConfigurationError("bench kv: keys 1..1000000, threads 1..64, seconds (0, 600]")
    say = progress or (lambda _m: None)
    zipf = Zipf(keys)
    value = b"v" * value_bytes
    figures: dict[str, float] = {}

    specs = [NodeSpec(f"n{i + 1}") for i in range(nodes)]
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(private_cluster("benchkv", specs, progress=say))
        clients = [Client(cluster.zk, cluster.name) for _ in range(threads + 1)]
        for client in clients:
            stack.callback(client.close)
        say(f"loading {keys} keys into each system")
        systems = {
            "kv_plain": _kv_ops(clients[:threads], "bench-plain", False, shards, keys, value),
            "redis_noaof": _redis_ops(stack, False, threads, keys, value),
            "kv_durable": _kv_ops(clients[:threads], "bench-durable", True, shards, keys, value),
            "redis_fsync_always": _redis_ops(stack, True, threads, keys, value),
        }
        # Each hermesx phase runs right beside its Redis counterpart, so the
        # ratios compare moments of the same machine load.
        for workload in WORKLOADS:
            for system, ops in systems.items():
                say(f"workload {workload.name}: {system}")
                numbers = _measure(ops, workload, zipf, keys, value, seconds)
                for figure, number in numbers.items():
                    figures[f"{system}_{workload.name}_{figure}"] = number
        say(f"transactional KV: transfers from {threads} threads")
        tx = _bench_transfers(clients, shards=shards, seconds=seconds, threads=threads)
        figures["tx_transfers_committed_per_s"] = tx["committed_per_s"]
        figures["tx_abort_rate"] = tx["abort_rate"]
    for workload in WORKLOADS:
        w = workload.name
        for ours, theirs in (("plain", "noaof"), ("durable", "fsync_always")):
            base = figures[f"redis_{theirs}_{w}_ops_per_s"]
            figures[f"ratio_{w}_kv_{ours}_vs_redis_{theirs}"] = (
                figures[f"kv_{ours}_{w}_ops_per_s"] / base if base else 0.0
            )
    return figures
