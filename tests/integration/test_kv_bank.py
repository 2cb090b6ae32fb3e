"""The bank test (docs/DESIGN.md §11): transfers keep the total through moves and kills.

Four nodes hold the shards and the workers' coordinators; while workers
transfer and an auditor sums every account in read-only transactions, a
driver moves shards and kill -9's two nodes (their shards and coordinators
come back from their checkpoints on other nodes), then kill -9's the
storesite and restarts it. Every audit sees the same total, and at the end
every acknowledged transfer is applied exactly once.
"""

from __future__ import annotations

import random
import threading

import pytest

from hermesx.apps.kv import KVStore, Transactions
from hermesx.apps.kv.bank import Bank, BankTally
from hermesx.client import Client
from hermesx.core.errors import HermesError
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bank_cluster(cluster_factory: object) -> LocalCluster:
    return cluster_factory(4, session_timeout=2.0)  # type: ignore[operator, no-any-return]


def test_an_in_doubt_transaction_is_finished_by_its_recovered_coordinator(
    bank_cluster: LocalCluster,
) -> None:
    cluster = bank_cluster
    with Client(cluster.zk, cluster.name) as client:
        store = KVStore.create(client, "doubt", 2, durable=True, nodes=["n1"])
        keys = [f"k{i}" for i in range(6)]
        store.put_many(dict.fromkeys(keys, 1))
        groups = store.group(keys)
        assert len(groups) == 2
        # A client locks, and its coordinator (on n2) decides commit; then the
        # client vanishes and n2 dies before any shard is told to apply it.
        gone = Transactions(store, node="n2")
        txid = f"{gone.coordinator}/1"
        for shard, shard_keys in groups.items():
            client.call_with(shard, "lock", [[txid, 10_000, shard_keys]])
        parts = [[s, ks, [[k, 0, 5] for k in ks]] for s, ks in groups.items()]
        assert client.call_with(gone.coordinator, "commit", [[txid, parts]]) == "committed"
        cluster.kill("node-n2")
        # The next client meets the prepared locks and asks the coordinator,
        # recovered from its checkpoint on another node: it applies its decision.
        other = Transactions(store, node="n1")
        assert other.read(keys, attempts=100) == dict.fromkeys(keys, 5)
        # Prepared without a decision (its coordinator never replied): presumed
        # abort releases it, and a late commit of it fails clearly.
        txid = f"{other.coordinator}/999"
        first = next(iter(groups.items()))
        client.call_with(first[0], "lock", [[txid, 10_000, first[1]]])
        client.call_with(first[0], "prepare", [[txid, first[1], [[first[1][0], 0, 0]]]])
        assert other.read(keys, attempts=100) == dict.fromkeys(keys, 5)
        with pytest.raises(HermesError, match="aborted: its outcome was resolved as aborted"):
            client.call_with(other.coordinator, "commit", [[txid, [[*first, []]]]])
        assert store.locks() == 0
        cluster.start_node(NodeSpec("n2"))
        cluster.wait_registered(nodes=["n2"])


def _move_one(client: Client, store: KVStore, rng: random.Random, dead: set[str]) -> bool:
    shard = rng.choice(store.shards)
    try:
        where = client.locate(shard).node
        live = sorted(n for n in client.nodes() if n not in dead and n != where)
        client.migrate(shard, rng.choice(live))
    except HermesError:  # its node just died, or it is moving already: another one
        return False
    return True


def test_bank_total_holds_through_moves_and_node_kills(bank_cluster: LocalCluster) -> None:
    cluster = bank_cluster
    with Client(cluster.zk, cluster.name) as client:
        store = KVStore.create(client, "bank", 4, durable=True)
        bank = Bank(store, accounts=16)
        bank.open_accounts()
        stop = threading.Event()
        tally = BankTally()
        runner = threading.Thread(
            target=bank.run,
            args=(lambda: Client(cluster.zk, cluster.name),),
            kwargs={
                "workers": 3,
                "seconds": 120,
                "stop": stop,
                "nodes": ["n3", "n4", "n1"],
                "tally": tally,
            },
        )
        runner.start()
        rng = random.Random(7)
        moves = 0
        dead: set[str] = set()
        try:
            for step in range(8):
                # Transfers go on between the faults (and after each kill).
                acked = len(tally.acknowledged)
                wait_until(
                    lambda acked=acked: len(tally.acknowledged) >= acked + 3, 60, "transfers go on"
                )
                wait_until(
                    lambda: _move_one(client, store, rng, dead), 30, "a shard moves", every=0.2
                )
                moves += 1
                if step in (2, 5):
                    victim = "n3" if step == 2 else "n4"
                    cluster.kill(f"node-{victim}")
                    dead.add(victim)
            # The auditor's read-only transactions went on too.
            wait_until(lambda: len(tally.audits) >= 4, 60, "audits go on")
            # Every transfer committed or aborted clearly, through the moves and kills.
            assert tally.errors == []
            # The storesite dies and comes back: calls that could not be made
            # durable meanwhile fail (their outcome is settled at the end).
            cluster.kill("storesite-s1")
            cluster.start_storesite("s1")
            acked, audits = len(tally.acknowledged), len(tally.audits)
            wait_until(lambda: len(tally.acknowledged) >= acked + 5, 60, "transfers go on")
            wait_until(lambda: len(tally.audits) > audits, 60, "audits go on")
        finally:
            stop.set()
            runner.join(120)
        assert not runner.is_alive()
        assert moves >= 5 and dead == {"n3", "n4"}
        assert len(tally.acknowledged) > 0 and tally.audits
        checker = Transactions(store)
        assert bank.verify(tally, checker) == []
        assert set(tally.audits) == {bank.total}
