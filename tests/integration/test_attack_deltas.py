"""Attacks on incremental checkpoints: a delta must never compose onto the wrong base.

docs/DESIGN.md §6: a durable (every-call) atom sends only what changed since its
last acknowledged checkpoint and the storesite composes it. The node never
checks that the storesite's composed state is byte for byte its own, so a
composition that loses a KV delete, a re-put, a value crossing a chunk, or a
base gone stale after a storesite restart, a move or a recovery on another
node would corrupt state silently, to be seen only when the atom is
recovered. Here a KV store takes a mixed sequence of acknowledged writes
and reads around each of those events, and after each kill -9 of its node
the recovered store must be exactly what the acknowledged calls made it.
"""

from __future__ import annotations

import pathlib
import random
import signal
import threading

import pytest

from hermesx.client import Client
from hermesx.core.errors import HermesError
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.storesite_client import StoresiteClient
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _ops(store: Client, name: str, expected: dict[str, object], rng: random.Random, n: int) -> None:
    """``n`` acknowledged calls: puts (small and over a 4 KiB chunk), overwrites,
    deletes (of present and absent keys), re-puts of deleted keys, and reads."""
    proxy = store.atom(name)
    for _ in range(n):
        key = f"k{rng.randrange(24)}"
        roll = rng.random()
        if roll < 0.45:
            value: object = (
                "v" * rng.choice([1, 100, 5000, 9000]) + str(rng.random())
                if rng.random() < 0.5
                else {"n": rng.randrange(10**6), "l": list(range(rng.randrange(30)))}
            )
            assert proxy.put([key, value]) is None
            expected[key] = value
        elif roll < 0.7:
            assert proxy.delete(key) is (key in expected)
            expected.pop(key, None)
        elif roll < 0.85:
            assert proxy.get(key) == expected.get(key)
        else:
            assert proxy.keys() == sorted(expected)


def _check(client: Client, name: str, expected: dict[str, object]) -> None:
    proxy = client.atom(name)
    assert proxy.keys() == sorted(expected)
    for key, value in expected.items():
        assert proxy.get(key) == value, key


def _deltas(client: Client) -> int:
    """Deltas the storesite composed since it started."""
    with StoresiteClient(_storesite_address(client), sid="s1", channels=client.channels) as site:
        return site.status().deltas_written


def _storesite_address(client: Client) -> str:
    member = client.naming.storesites().get("s1")
    return member.address if member is not None else ""


@pytest.fixture(scope="module")
def three(cluster_factory: ClusterFactory) -> LocalCluster:
    return cluster_factory(3, session_timeout=2.0)


def test_deltas_through_restarts_moves_and_recoveries_compose_exactly(
    three: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    rng = random.Random(13)
    expected: dict[str, object] = {}
    with Client(three.zk, three.name, timeout=60.0) as client:
        client.create(atoms["kvstore"], name=unique_name, on="n1", checkpoint="every-call")
        _ops(client, unique_name, expected, rng, 60)
        assert _deltas(client) > 10  # the path under attack was taken

        # The storesite restarts between two deltas (a clean stop: its store is intact).
        before = _storesite_address(client)
        three.kill("storesite-s1", signal.SIGTERM)
        three.start_storesite("s1")
        wait_until(lambda: _storesite_address(client) not in ("", before), 60.0, "s1 to come back")
        _ops(client, unique_name, expected, rng, 40)
        assert _deltas(client) > 5

        # Moved and moved back: the node it returns to must not take its old base.
        client.migrate(unique_name, "n2")
        _ops(client, unique_name, expected, rng, 20)
        client.migrate(unique_name, "n1")
        _ops(client, unique_name, expected, rng, 40)

        # Killed: what was acknowledged is what the storesite composed.
        three.kill("node-n1")
        _check(client, unique_name, expected)
        holder = client.locate(unique_name).node
        assert holder != "n1"

        # Deltas again, from the node that recovered it; killed again.
        _ops(client, unique_name, expected, rng, 60)
        three.kill(f"node-{holder}")
        _check(client, unique_name, expected)


def test_acknowledged_calls_survive_a_storesite_kill_mid_batch_then_a_node_kill(
    cluster_factory: ClusterFactory, atoms: dict[str, pathlib.Path]
) -> None:
    """Eight atoms' checkpoints share group commits; the storesite is killed with -9
    while they flow, then their node. Every call acknowledged is in the recovered
    state, and at most the one call each caller was left not knowing ran besides."""
    cluster = cluster_factory(2, session_timeout=2.0)
    names = [f"g{i}" for i in range(8)]
    with Client(cluster.zk, cluster.name, timeout=3.0) as client:
        for name in names:
            client.create(atoms["counter"], name=name, on="n1", checkpoint="every-call")
        acknowledged = dict.fromkeys(names, 0)
        ended: dict[str, str] = {}

        def calls(name: str) -> None:
            proxy = client.atom(name)
            while True:
                try:
                    acknowledged[name] = proxy.incr(1)
                except HermesError as exc:
                    ended[name] = exc.kind
                    return

        threads = [threading.Thread(target=calls, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        wait_until(lambda: min(acknowledged.values()) >= 15, 120.0, "calls to flow")
        before = _storesite_address(client)
        cluster.kill("storesite-s1")
        for thread in threads:
            thread.join(60)
        assert set(ended) == set(names), ended
        cluster.kill("node-n1")
        cluster.start_storesite("s1")
        wait_until(lambda: _storesite_address(client) not in ("", before), 60.0, "s1 to come back")
    with Client(cluster.zk, cluster.name, timeout=60.0) as settled:
        for name in names:
            value = settled.atom(name).get()
            assert acknowledged[name] <= value <= acknowledged[name] + 1, (
                name,
                value,
                acknowledged[name],
            )


def test_deltas_racing_passivations_and_moves_compose_exactly(
    cluster_factory: ClusterFactory, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """One caller writes and reads a durable KV store while it is passivated and moved
    again and again under it (each sends the whole state; the next checkpoint must
    not be a delta on the base from before). After a kill -9 of its node the
    recovered store is exactly what the acknowledged calls made it."""
    three = cluster_factory(3, session_timeout=2.0)  # the other tests kill nodes
    rng = random.Random(7)
    expected: dict[str, object] = {}
    failures: list[str] = []
    stop = threading.Event()
    with Client(three.zk, three.name, timeout=60.0) as client:
        client.create(atoms["kvstore"], name=unique_name, on="n1", checkpoint="every-call")
        _ops(client, unique_name, expected, rng, 10)

        def caller() -> None:
            try:
                while not stop.is_set():
                    _ops(client, unique_name, expected, rng, 5)
            except Exception as exc:  # the test fails below, saying which
                failures.append(f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=caller)
        thread.start()
        try:
            for round in range(6):
                stop.wait(0.3)
                if round % 2:
                    client.migrate(
                        unique_name, "n2" if client.locate(unique_name).node == "n1" else "n1"
                    )
                else:
                    client.passivate(unique_name)
        finally:
            stop.set()
            thread.join(120)
        assert failures == []
        assert _deltas(client) > 0
        _ops(client, unique_name, expected, rng, 10)
        holder = client.locate(unique_name).node
        three.kill(f"node-{holder}")
        _check(client, unique_name, expected)
