"""A slow storesite (scenario 6): calls still complete, correctly (docs/DESIGN.md §5, §6).

A delaying proxy (``faultkit.TcpProxy``) sits in front of the storesite and
the storesite's entry in the name service is pointed at it, so every node
and client reaches the storesite only through the delay: every-call
checkpoints, locates, and the prepare / commit of a migration made while
the load runs.
"""

from __future__ import annotations

import pathlib
import time

from faultkit import (
    ClusterStarter,
    LoadGenerator,
    Report,
    TcpProxy,
    advertise_storesite,
    assert_nothing_lost,
    final_value,
    latency_ms,
    tally,
)

from hermesx.client import Client
from hermesx.testing.wait import wait_until
from nameservice.zookeeper import ZooKeeperServer

DELAY_S = 0.05  # each way: every storesite round trip takes 100 ms more


def test_slow_storesite(
    start_cluster: ClusterStarter,
    zk_server: ZooKeeperServer,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    cluster = start_cluster(["n1", "n2"], session_timeout=4.0)
    with Client(cluster.zk, cluster.name) as client:
        real = client.naming.storesites()["s1"].address
        with TcpProxy(real, delay=DELAY_S) as slow:
            advertise_storesite(
                zk_server.connect_string, client.address.cluster, "s1", slow.address
            )
            wait_until(
                lambda: client.naming.storesites()["s1"].address == slow.address,
                60.0,
                "the storesite's new address to reach the client",
            )
            # Created after the switch: every checkpoint of this atom goes through the delay.
            client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
            load = LoadGenerator(client.address.zk, client.address.cluster, "c")
            with load:
                load.wait_acks(20)
                moved = client.migrate("c", "n2")
                moved_at = time.monotonic()
                load.wait_acks(20, since=moved_at)
            final = final_value(client, "c")
            where = client.locate("c")
            through_proxy = slow.bytes_forwarded
            connections = slow.accepted
    records = load.records
    t = tally("6 slow storesite (+100 ms RTT)", records, final)
    t.notes.update(
        p50_ms=latency_ms(records, 0.5),
        p99_ms=latency_ms(records, 0.99),
        move_total_ms=round(moved.total_ms, 1),
        proxy_connections=connections,
        proxy_bytes=through_proxy,
    )
    report(t)
    assert_nothing_lost(t)
    assert t.failed_clear == 0, t
    assert where.node == "n2" and where.age == 2, where
    # Both nodes (and the client's locates) really went through the delay.
    assert connections >= 2 and through_proxy > 0
    # Each acknowledged call waited for its checkpoint's round trip through the delay.
    assert min(r.ended - r.started for r in records if r.ok) >= 2 * DELAY_S
