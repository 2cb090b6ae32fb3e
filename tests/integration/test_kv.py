"""The sharded KV store on atoms (docs/DESIGN.md §11): operations, transactions, bad input."""

from __future__ import annotations

import json
import pathlib
import subprocess
import threading
from collections.abc import Iterator

import pytest
from cli_here import run_hermesx_here

from hermesx.apps.kv import (
    DELETE,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    KVStore,
    TransactionAborted,
    Transactions,
    rebalance,
)
from hermesx.client import Client
from hermesx.core.errors import ConfigurationError, NameNotFoundError
from hermesx.local.cluster import LocalCluster
from hermesx.testing.cli import cluster_env, run_hermesx
from hermesx.testing.moves import move_in_background

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(cluster: LocalCluster) -> Iterator[KVStore]:
    with Client(cluster.zk, cluster.name) as client:
        yield KVStore.create(client, "t1", 4, durable=True)


def test_put_get_delete_scan_across_shards(store: KVStore, cluster: LocalCluster) -> None:
    for i in range(40):
        store.put(f"user:{i:03d}", {"n": i})
    store.put("other", "x")
    assert store.get("user:007") == {"n": 7}
    assert store.get("missing") is None
    # The keys are spread over every shard by the ring.
    assert len({store.shard_of(f"user:{i:03d}") for i in range(40)}) == 4
    found = store.scan("user:01", limit=100)
    assert [k for k, _ in found] == [f"user:{i:03d}" for i in range(10, 20)]
    assert store.scan("user:", limit=5) == [(f"user:{i:03d}", {"n": i}) for i in range(5)]
    assert store.delete("other") is True
    assert store.delete("other") is False
    assert store.count() == 40
    # Another client finds the same store, and the same placement, in the name service.
    with Client(cluster.zk, cluster.name) as other:
        again = KVStore.open(other, "t1")
        assert again.shards == store.shards
        assert again.get("user:039") == {"n": 39}


def test_an_atom_places_keys_as_the_python_client_does(
    store: KVStore, atoms: dict[str, pathlib.Path]
) -> None:
    store.client.create(atoms["kvclient"], name="kv-user")
    user = store.client.atom("kv-user")
    for i in range(20):
        assert user.shard_of("t1", f"from-atom-{i}") == store.shard_name(f"from-atom-{i}")
    user.put("t1", "from-atom", {"by": "atom"})
    assert store.get("from-atom") == {"by": "atom"}
    store.put("from-python", [1, 2])
    assert user.get("t1", "from-python") == [1, 2]
    assert user.delete("t1", "from-python") is True
    assert sorted(k for k, _ in user.scan("t1", "from-", 100)) == ["from-atom"]


def test_transactions_commit_and_conflict(store: KVStore) -> None:
    txs = Transactions(store)
    store.put("a", 10)
    store.put("b", 0)
    txs.run(["a", "b"], lambda v: {"a": v["a"] - 3, "b": v["b"] + 3})
    assert (store.get("a"), store.get("b")) == (7, 3)
    assert txs.read(["a", "b"]) == {"a": 7, "b": 3}
    txs.run(["a"], lambda v: {"a": DELETE})
    assert store.get("a") is None
    # A lock held by another transaction aborts at once, with the reason.
    other = Transactions(store)
    started = threading.Event()
    release = threading.Event()

    def holder(values: dict[str, object]) -> dict[str, object]:
        started.set()
        release.wait(10)
        return {"b": 100}

    thread = threading.Thread(target=lambda: other.run(["b"], holder))
    thread.start()
    started.wait(10)
    with pytest.raises(TransactionAborted, match="lock conflict: key b is locked by transaction"):
        txs.run(["b"], lambda v: {"b": 1})
    release.set()
    thread.join(10)
    assert store.get("b") == 100
    assert store.locks() == 0


def test_transactions_on_a_moving_shard_commit_or_abort_clearly(store: KVStore) -> None:
    txs = Transactions(store)
    store.put("moving", 0)
    shard = store.shard_of("moving")
    committed = 0
    for target in ("n2", "n3", "n1"):
        if store.client.locate(shard).node == target:
            continue
        mover, outcome = move_in_background(store.client, shard, target)
        while mover.is_alive() or committed == 0:
            try:
                txs.run(["moving"], lambda v: {"moving": v["moving"] + 1})
                committed += 1
            except TransactionAborted:
                pass
        mover.join(30)
        assert outcome == ["moved"]
    assert store.get("moving") == committed


def test_a_vanished_clients_locks_end_with_their_lease(store: KVStore) -> None:
    txs = Transactions(store, lease_ms=500)
    shard = store.shard_of("held")
    # A client that locked and went away: nobody ever commits or aborts it.
    store.client.call_with(shard, "lock", [[f"{txs.coordinator}/999", 500, ["held"]]])
    with pytest.raises(TransactionAborted, match="locked by transaction"):
        txs.run(["held"], lambda v: {"held": 1})
    txs.run(["held"], lambda v: {"held": 2}, attempts=50)
    assert store.get("held") == 2


def test_rebalance_under_load_fails_no_call(store: KVStore, cluster: LocalCluster) -> None:
    # Every shard starts on n1: rebalancing spreads them while clients go on.
    packed = KVStore.create(store.client, "reb", 6, durable=True, nodes=["n1"])
    stop = threading.Event()
    failures: list[BaseException] = []
    done = [0] * 4

    def load(worker: int) -> None:
        with Client(cluster.zk, cluster.name) as client:
            mine = KVStore.open(client, "reb")
            i = 0
            while not stop.is_set():
                key = f"w{worker}-{i % 50}"
                try:
                    mine.put(key, i)
                    assert mine.get(key) == i
                except BaseException as exc:  # every failure is the test's business
                    failures.append(exc)
                    return
                done[worker] += 1
                i += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        moves = rebalance(packed, window=0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not failures, failures[0]
    assert len(moves) >= 2
    nodes = {row["node"] for row in packed.describe()}
    assert len(nodes) >= 2
    assert all(count > 0 for count in done)


def test_bad_input_is_one_clear_error(store: KVStore) -> None:
    with pytest.raises(ConfigurationError, match=f"key is {MAX_KEY_BYTES + 1} bytes; the limit"):
        store.put("k" * (MAX_KEY_BYTES + 1), 1)
    with pytest.raises(ConfigurationError, match=r"value is .* bytes .*; the limit is"):
        store.put("big", b"x" * MAX_VALUE_BYTES)
    with pytest.raises(ConfigurationError, match="scan prefix is"):
        store.scan("\u00e9" * MAX_KEY_BYTES)
    with pytest.raises(ConfigurationError, match="scan limit must be 0 to 10000"):
        store.scan("", limit=10**6)
    # A prefix full of what a pattern language would choke on is just bytes.
    store.put(".*[(\\", 1)
    assert store.scan(".*[(") == [(".*[(\\", 1)]
    for count in (0, 10_000, -1):
        with pytest.raises(ConfigurationError, match="shard count must be 1 to 1024"):
            KVStore.create(store.client, "bad", count)
    with pytest.raises(NameNotFoundError, match="no KV store 'nothing'"):
        KVStore.open(store.client, "nothing")
    with pytest.raises(ConfigurationError, match="exists already"):
        KVStore.create(store.client, "t1", 2)
    # The store goes on.
    assert store.get("user:001") == {"n": 1}


def _hermesx(cluster: LocalCluster, *argv: str) -> subprocess.CompletedProcess[str]:
    """``hermesx kv ARGV`` run by the command's entry point in this process."""
    return run_hermesx_here(cluster_env(cluster), "kv", *argv)


def test_cli_verbs(cluster: LocalCluster) -> None:
    # The first verb runs as `python -m hermesx`, as a user runs it; the others in this process.
    made = run_hermesx(
        cluster_env(cluster), "kv", "create", "cli", "--shards", "2", "--cache", "--json"
    )
    assert made.returncode == 0, made.stderr
    assert len(json.loads(made.stdout)["shards"]) == 2
    assert _hermesx(cluster, "put", "cli", "color", '{"r": 1}').returncode == 0
    got = _hermesx(cluster, "get", "cli", "color", "--json")
    assert json.loads(got.stdout) == {"key": "color", "value": {"r": 1}}
    scanned = _hermesx(cluster, "scan", "cli", "co", "--json")
    assert json.loads(scanned.stdout) == [{"key": "color", "value": {"r": 1}}]
    # Bad input: one line naming what was wrong, a non-zero exit.
    bad = _hermesx(cluster, "create", "cli0", "--shards", "0")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1] == "error: shard count must be 1 to 1024, not 0"
