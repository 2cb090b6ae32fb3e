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
from faultkit import ClusterStarter, counter_cluster, restart_storesite
from test_exactly_once import App, Apps

from hermesx.client import Client
from hermesx.rpc.storesite_client import StoresiteClient
from storesite.chain import MAX_CHAIN

pytestmark = pytest.mark.timeout(300)


def test_storesite_kills_across_chain_cuts_then_a_node_kill_lose_and_double_nothing(
    start_cluster: ClusterStarter, atoms: dict[str, pathlib.Path]
) -> None:
    with counter_cluster(start_cluster, atoms["counter"]) as (cluster, admin):
        with Apps(cluster, "c") as apps:
            for _ in range(4):
                apps.wait_more(MAX_CHAIN // 2 + random.randrange(MAX_CHAIN), 120.0)
                restart_storesite(cluster, admin)
            apps.wait_more(20, 120.0)
        assert not apps.failures, apps.failures[:3]
        values = apps.values
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
    start_cluster: ClusterStarter, atoms: dict[str, pathlib.Path]
) -> None:
    """The call whose checkpoint cuts the chain (the 65th delta on one anchor) is
    under way when the storesite is killed, three times over: its retry by request
    id settles it once, and a node kill after recovers every acknowledged call."""
    with counter_cluster(start_cluster, atoms["counter"], timeout=1.5) as (cluster, client):
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
            restart_storesite(cluster, client)
            cutting.join(120)
            assert not app.failures, app.failures
            assert app.values[-1] == expected
        cluster.kill("node-n1")
        assert client.atom("c", timeout=60).get() == expected
        assert client.locate("c").node == "n2"
