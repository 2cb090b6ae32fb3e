"""`hermesx bench gateway`: a call over the HTTP gateway against the Python client's, in one run.

It starts a private local cluster (ZooKeeper, a storesite, two nodes) with
its gateway (HTTPS, as `hermesx up` runs it), creates a ``counter`` atom and
measures ``incr`` by name: p50 / p99 latency and calls/s with one caller,
and calls/s with four, through the gateway (``http.client``, one kept-alive
connection per caller) and through :class:`hermesx.Client`; and the p50 of
an HTTP call carrying a new ``Idempotency-Key`` (the gateway writes the key
before the call). One caller's calls of the three kinds are interleaved and
the four callers' rounds alternate, so that both paths meet the same load;
the ratios are HTTP over the client's.
"""

from __future__ import annotations

import http.client
import json
import ssl
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from hermesx.client import Client
from hermesx.core.errors import HermesError
from hermesx.local.cluster import LocalCluster, NodeSpec, private_cluster
from hermesx.runtime.build import build_examples

__all__ = ["run"]

Progress = Callable[[str], None]
Caller = Callable[[int], None]

CALLS = 1000
CALLS_EACH_OF_4 = 100
ROUNDS = 3


def _timed(call: Caller, calls: int, callers: int) -> tuple[list[float], float]:
    """Latencies (µs) of ``calls`` calls by each of ``callers`` threads, and calls/s overall."""
    samples: list[list[float]] = [[] for _ in range(callers)]

    def caller(i: int) -> None:
        for n in range(calls):
            t0 = time.perf_counter()
            call(i * calls + n)
            samples[i].append((time.perf_counter() - t0) * 1e6)

    began = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(caller, range(callers)))
    elapsed = time.perf_counter() - began
    every = [s for own in samples for s in own]
    return every, len(every) / elapsed


class _HttpCaller:
    """One kept-alive HTTP(S) connection per thread to the gateway."""

    def __init__(self, url: str, trust: ssl.SSLContext | None, path: str) -> None:
        self._url = urlsplit(url)
        self._trust = trust
        self._path = path
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            host, port = self._url.hostname or "127.0.0.1", self._url.port
            if self._url.scheme == "https":
                conn = http.client.HTTPSConnection(host, port, context=self._trust, timeout=30)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=30)
            self._local.conn = conn
        return conn

    def __call__(self, n: int, key: str = "") -> None:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Idempotency-Key"] = key
        conn = self._connection()
        conn.request("POST", self._path, body=b"1", headers=headers)
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise HermesError(f"the gateway answered {reply.status}: {body[:200]!r}")
        json.loads(body)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _figures(cluster: LocalCluster, say: Progress) -> dict[str, float]:
    url = cluster.start_gateway()
    trust = ssl.create_default_context(cafile=str(cluster.tls_dir / "ca.pem"))
    wasm = {p.stem: p for p in build_examples(quiet=True)}["counter"]
    with Client(cluster.zk, cluster.name) as client:
        client.create(wasm, name="bench-gw", on="n1")
        over_http = _HttpCaller(url, trust, "/v1/atoms/bench-gw/incr")
        counter = client.atom("bench-gw")

        def by_client(n: int) -> None:
            counter.incr(1)

        def keyed(n: int) -> None:
            over_http(n, key=f"bench-{n}")  # a new key each call: the key is written

        callers: dict[str, Caller] = {"http": over_http, "http_keyed": keyed, "client": by_client}
        say("warming up")
        for call in callers.values():
            _timed(call, 100, 1)
        # Interleaved, so that both paths see the same machine (its load varies).
        say(f"{CALLS} calls of each, one caller, interleaved")
        one: dict[str, list[float]] = {name: [] for name in callers}
        for n in range(CALLS):
            for name, call in callers.items():
                t0 = time.perf_counter()
                call(CALLS + n)
                one[name].append((time.perf_counter() - t0) * 1e6)
        figures: dict[str, float] = {}
        for name in ("http", "client"):
            figures[f"{name}_p50_us"] = statistics.median(one[name])
            figures[f"{name}_p99_us"] = _p(one[name], 0.99)
            figures[f"{name}_calls_per_s"] = len(one[name]) / (sum(one[name]) / 1e6)
        figures["http_keyed_p50_us"] = statistics.median(one["http_keyed"])
        say(f"four callers, {ROUNDS} rounds of {CALLS_EACH_OF_4} calls each, alternating")
        done = {"http": 0.0, "client": 0.0}
        took = {"http": 0.0, "client": 0.0}
        for _ in range(ROUNDS):
            for name in done:
                began = time.perf_counter()
                samples, _ = _timed(callers[name], CALLS_EACH_OF_4, 4)
                took[name] += time.perf_counter() - began
                done[name] += len(samples)
        for name in done:
            figures[f"{name}_4_callers_calls_per_s"] = done[name] / took[name]
        over_http.close()
    figures["http_over_client_p50"] = figures["http_p50_us"] / figures["client_p50_us"]
    figures["http_over_client_calls_per_s"] = (
        figures["http_calls_per_s"] / figures["client_calls_per_s"]
    )
    figures["http_over_client_4_callers_calls_per_s"] = (
        figures["http_4_callers_calls_per_s"] / figures["client_4_callers_calls_per_s"]
    )
    return {k: round(v, 3) for k, v in figures.items()}


def run(progress: Progress | None = None) -> dict[str, float]:
    say = progress or (lambda _msg: None)
    with private_cluster(
        "bench-gw", [NodeSpec("n1"), NodeSpec("n2")], progress=progress
    ) as cluster:
        return _figures(cluster, say)
