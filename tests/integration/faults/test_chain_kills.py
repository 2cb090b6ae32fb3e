"""kill -9 of the storesite while chains of delta records grow and are cut, then of
the node, real processes (docs/DESIGN.md §6 "Incremental checkpoints", §4 "Exactly once").

Three applications increment one every-call counter, retrying by request id a
call whose outcome is unknown, across well over one cut of its chain (a
whole checkpoint every 64 deltas) while the storesite is killed with SIGKILL
at random moments and restarted at once, four times; then the node holding
the atom is killed too. Recovered on the other node from its chain, the
counter holds every acknowledged increment exactly once.
"""

from __future__ import annotations

import pathlib
import random
import threading
import time

import pytest
from faultkit import ClusterStarter
from test_exactly_once import App, _address

from hermesx.client import Client
from hermesx.rpc.storesite_client import StoresiteClient
from hermesx.testing.wait import wait_until
from nameservice.zookeeper import ZooKeeperServer
from storesite.chain import MAX_CHAIN

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_storesite_kills_across_chain_cuts_then_a_node_kill_lose_and_double_nothing(
    start_cluster: ClusterStarter, zk_server: ZooKeeperServer, atoms: dict[str, pathlib.Path]
) -> None:
    cluster = start_cluster(["n1", "n2"], zk=zk_server.connect_string, session_timeout=2.0)
    with Client(cluster.zk, cluster.name) as admin:
        admin.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
        clients = [Client(cluster.zk, cluster.name, timeout=1.5) for _ in range(3)]
        apps = [App(c, "c") for c in clients]
        threads = [threading.Thread(target=a.run, name=f"app-{i}") for i, a in enumerate(apps)]
        try:
            for t in threads:
                t.start()
            for _ in range(4):
                goal = sum(a.acks() for a in apps) + MAX_CHAIN // 2 + random.randrange(MAX_CHAIN)
                wait_until(lambda g=goal: sum(a.acks() for a in apps) >= g, 120.0, "increments")
                old = _address(admin, "s1")
                cluster.kill("storesite-s1")
                cluster.start_storesite("s1")
                wait_until(
                    lambda o=old: _address(admin, "s1") not in ("", o),
                    60.0,
                    "the restarted storesite to register",
                )
            goal = sum(a.acks() for a in apps) + 20
            wait_until(lambda: sum(a.acks() for a in apps) >= goal, 120.0, "20 more increments")
        finally:
            for a in apps:
                a.stop.set()
            for t in threads:
                t.join(timeout=120.0)
            for c in clients:
                c.close()
        failures = [f for a in apps for f in a.failures]
        assert not failures, failures[:3]
        values = sorted(v for a in apps for v in a.values)
        assert len(values) > 2 * MAX_CHAIN
        cluster.kill("node-n1")
        # Every increment the apps saw acknowledged, applied once, nothing else.
        assert admin.atom("c", timeout=60).get() == len(values)
        assert values == list(range(1, len(values) + 1)), values
        assert admin.locate("c").node == "n2"


def _deltas_written(client: Client) -> int:
    address = client.naming.storesites()["s1"].address
    with StoresiteClient(address, sid="s1", channels=client.channels) as site:
        return site.status().deltas_written


def test_a_kill_9_of_the_storesite_at_a_chain_cut_loses_and_doubles_nothing(
    start_cluster: ClusterStarter, zk_server: ZooKeeperServer, atoms: dict[str, pathlib.Path]
) -> None:
    """The call whose checkpoint cuts the chain (the 65th delta on one anchor) is
    under way when the storesite is killed, three times over: its retry by request
    id settles it once, and a node kill after recovers every acknowledged call."""
    cluster = start_cluster(["n1", "n2"], zk=zk_server.connect_string, session_timeout=2.0)
    with Client(cluster.zk, cluster.name, timeout=1.5) as client:
        client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
        app = App(client, "c")
        expected = 0
        for _ in range(3):
            # Each storesite process counts its deltas from 0; its first checkpoint is
            # whole, or a delta on the cut it stored: MAX_CHAIN deltas bring the next cut.
            while _deltas_written(client) < MAX_CHAIN:
                expected += 1
                assert client.atom("c").incr(1) == expected
            assert _deltas_written(client) == MAX_CHAIN
            expected += 1
            cutting = threading.Thread(target=app.run_once)
            cutting.start()
            time.sleep(random.uniform(0.0, 0.01))
            old = _address(client, "s1")
            cluster.kill("storesite-s1")
            cluster.start_storesite("s1")
            wait_until(
                lambda o=old: _address(client, "s1") not in ("", o),
                60.0,
                "the restarted storesite to register",
            )
            cutting.join(120)
            assert not app.failures, app.failures
            assert app.values[-1] == expected
        cluster.kill("node-n1")
        assert client.atom("c", timeout=60).get() == expected
        assert client.locate("c").node == "n2"
