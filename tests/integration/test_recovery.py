"""Storesites: checkpoints, broken chains, dormant atoms and recovery (docs/DESIGN.md §6)."""

from __future__ import annotations

import pathlib

import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.rpc.proto import hermesx_pb2 as pb

pytestmark = pytest.mark.integration


def _active_here(client: Client, node: str, guid: str) -> bool:
    reply = client.invoker.node_stub(node).Locate(pb.LocateRequest(guid=guid), timeout=5)
    return bool(reply.active_here)


def test_killed_node_atom_recovers_with_every_acknowledged_increment(
    cluster_factory: object, atoms: dict[str, pathlib.Path]
) -> None:
    cluster: LocalCluster = cluster_factory(3, session_timeout=2.0)  # type: ignore[operator]
    with Client(cluster.zk, cluster.name) as client:
        guid = client.create(atoms["counter"], name="durable", on="n2", checkpoint="every-call")
        for _ in range(25):
            client.atom("durable").incr(1)
        cluster.kill("node-n2")
        # Invocations keep being retried until the storesite has recovered the atom.
        assert client.atom("durable").incr(1) == 26
        where = client.locate("durable")
        assert where.node in ("n1", "n3")
        assert where.age > 1
        # The killed node, restarted, holds no copy.
        cluster.start_node(NodeSpec("n2"))
        cluster.wait_registered(nodes=["n2"])
        assert not _active_here(client, "n2", guid)
        assert client.atom("durable").get() == 26


def test_broken_chain_completes_through_the_storesite(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    guid = client.create(atoms["counter"], name=unique_name, on="n1")
    client.migrate(unique_name, "n2")
    client.migrate(unique_name, "n3")
    # n1 points to n2 (an intermediate node); take n2 down.
    cluster.kill("node-n2")
    try:
        outcome = client.invoke(guid, "incr", codec.pack(1), via="n1", trace=True)
        assert codec.unpack(outcome.result) == 1
        events = [h.event for h in outcome.trace]
        assert "storesite" in events, events
        assert outcome.tad is not None and outcome.tad.node == "n3"
    finally:
        cluster.start_node(NodeSpec("n2"))
        cluster.wait_registered(nodes=["n2"])


def test_passivated_atom_is_activated_by_the_next_call(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    guid = client.create(atoms["counter"], name=unique_name, on="n1")
    client.atom(unique_name).incr(7)
    client.passivate(unique_name)
    assert not any(_active_here(client, n, guid) for n in ("n1", "n2", "n3"))
    assert client.atom(unique_name).incr(1) == 8
    assert sum(_active_here(client, n, guid) for n in ("n1", "n2", "n3")) == 1


def test_checkpoint_on_request_survives_a_kill(
    cluster_factory: object, atoms: dict[str, pathlib.Path]
) -> None:
    cluster: LocalCluster = cluster_factory(2, session_timeout=2.0)  # type: ignore[operator]
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["counter"], name="lazy", on="n1", checkpoint="on-request")
        client.atom("lazy").incr(5)
        client.checkpoint("lazy")
        client.atom("lazy").incr(100)  # not checkpointed: lost with the node, by policy
        cluster.kill("node-n1")
        assert client.atom("lazy").get() == 5
        assert client.locate("lazy").node == "n2"
