"""The soak: minutes of load with faults in rotation (only with ``--soak``; docs/DESIGN.md §4-§6).

Three client threads keep incrementing a counter while, in turn, the node
hosting it is killed (and restarted), the storesite is killed (and
restarted), and the atom is migrated. ``FAULT_SOAK_SECONDS`` sets the
length (default 180).
"""

from __future__ import annotations

import itertools
import os
import pathlib
import time
from collections.abc import Callable

import pytest
from faultkit import (
    ClusterStarter,
    LoadGenerator,
    Tally,
    assert_nothing_lost,
    final_value,
    tally,
)

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.testing.wait import wait_until

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]

NODES = ("n1", "n2", "n3")


def _kill_host(cluster: LocalCluster, client: Client) -> str:
    host = client.locate("c").node
    cluster.kill(f"node-{host}")
    killed_at = time.monotonic()
    wait_until(lambda: _located_elsewhere(client, host), 90.0, "recovery")
    cluster.start_node(NodeSpec(host))
    cluster.wait_registered(nodes=[host])
    return f"kill {host}, recovered in {time.monotonic() - killed_at:.1f}s"


def _located_elsewhere(client: Client, host: str) -> bool:
    try:
        return client.locate("c").node != host
    except Exception:
        return False


def _kill_storesite(cluster: LocalCluster, client: Client) -> str:
    old = client.naming.storesites()["s1"].address
    cluster.kill("storesite-s1")
    time.sleep(1.0)  # the outage
    cluster.start_storesite("s1")
    wait_until(
        lambda: (m := client.naming.storesites().get("s1")) is not None and m.address != old,
        90.0,
        "the storesite to register again",
    )
    return "kill storesite"


def _migrate(cluster: LocalCluster, client: Client) -> str:
    here = client.locate("c").node
    there = next(n for n in NODES if n != here)
    client.migrate("c", there)
    return f"migrate {here}->{there}"


def test_soak(
    soak: bool,
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
    report: Callable[[Tally], None],
) -> None:
    seconds = float(os.environ.get("FAULT_SOAK_SECONDS", "180"))
    cluster = start_cluster(list(NODES))
    faults = itertools.cycle((_kill_host, _migrate, _kill_storesite))
    done: list[str] = []
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
        load = LoadGenerator(client.address.zk, client.address.cluster, "c", resubmit_for=60.0)
        with load:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                load.wait_acks(50, since=time.monotonic(), timeout=120.0)
                done.append(next(faults)(cluster, client))
            load.wait_acks(50, since=time.monotonic(), timeout=120.0)
        final = final_value(client, "c")
    t = tally(f"soak {seconds:.0f}s ({len(done)} faults)", load.records, final)
    t.notes.update(faults=done)
    report(t)
    assert_nothing_lost(t)
    assert all(r.ok for r in load.records), t.errors_by_kind
    assert final == t.acknowledged
