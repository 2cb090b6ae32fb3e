"""Dormant atoms, idle passivation and storesite moves (docs/DESIGN.md §6)."""

from __future__ import annotations

import pathlib
import random

import pytest

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration

# Ten times the sample called back: what stays dormant must outnumber what wakes by far.
MANY = 300


def _active_nodes(client: Client, guid: str) -> list[str]:
    nodes = []
    for node in sorted(client.nodes()):
        reply = client.invoker.node_stub(node).Locate(pb.LocateRequest(guid=guid), timeout=5)
        if reply.active_here:
            nodes.append(node)
    return nodes


def test_many_dormant_atoms_activate_on_their_next_call(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    wasm = atoms["counter"].read_bytes()
    names = [f"{unique_name}-{i}" for i in range(MANY)]
    for i, name in enumerate(names):
        client.create(wasm, name=name, init=i, checkpoint="on-request", on=f"n{i % 3 + 1}")
    for name in names:
        client.passivate(name)
    assert sum(client.node_status(n).active_atoms for n in client.nodes()) == 0
    sample = random.Random(7).sample(range(MANY), 30)
    for i in sample:
        assert client.atom(names[i]).incr(1) == i + 1
    # Only what was called came back; the rest stays on disk.
    assert sum(client.node_status(n).active_atoms for n in client.nodes()) == len(sample)


def test_an_idle_atom_passivates_itself_and_comes_back(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    guid = client.create(atoms["counter"], name=unique_name, on="n2", idle_passivate_seconds=0.5)
    assert client.atom(unique_name).incr(4) == 4
    wait_until(lambda: not _active_nodes(client, guid), 10.0, "the housekeeping to passivate it")
    assert _active_nodes(client, guid) == []
    assert client.atom(unique_name).incr(1) == 5
    assert len(_active_nodes(client, guid)) == 1


def test_moving_an_atoms_home_keeps_it_reachable_and_recoverable(
    cluster_factory: object, atoms: dict[str, pathlib.Path]
) -> None:
    cluster: LocalCluster = cluster_factory(  # type: ignore[operator]
        3, storesites=("s1", "s2"), session_timeout=2.0
    )
    with Client(cluster.zk, cluster.name) as client:
        guid = client.create(atoms["counter"], name="homed", on="n1")
        client.atom("homed").incr(3)
        old_home = guid.partition(":")[0]
        new_home = "s2" if old_home == "s1" else "s1"
        client.move_home("homed", new_home)
        assert client.locate("homed").storesite == new_home
        assert client.atom("homed").incr(1) == 4
        # The new home is the one that recovers it when its node dies.
        cluster.kill("node-n1")
        assert client.atom("homed").incr(1) == 5
        assert client.locate("homed").node in ("n2", "n3")
