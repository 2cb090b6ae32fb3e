"""A client claiming to be a node in its requests (docs/DESIGN.md §10, §4 follow-caller).

``InvokeRequest.caller_node`` names the node whose atom made a call; the
follow-caller placement moves an atom to the node that made most of its
calls. A client with the cluster's client certificate that sets it counted
its calls as that node's and so steered the atom (here: 30 calls claiming
n2 moved an atom from n1 to n2, where nothing calls it). The field is now
refused to every role but ``node``, on both transports, and the atom runs
none of those calls; calls between atoms still move it (test_migration.py).
"""

from __future__ import annotations

import pathlib

import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.transports import invoke_outcome

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(cluster_factory: ClusterFactory) -> LocalCluster:
    """Two nodes: the client claims to be n2 (the plugin's ``client`` calls this cluster)."""
    return cluster_factory(2)


def _outcome(client: Client, transport: str, request: pb.InvokeRequest) -> str:
    """The error kind ``request`` to n1 ends with (``result`` when it succeeds)."""
    return invoke_outcome(client, transport, request, 20.0)


def test_a_client_claiming_a_caller_node_is_refused_and_steers_nothing(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    guid = client.create(atoms["counter"], name=unique_name, on="n1", placement="follow-caller")
    kinds = set()
    for i in range(30):
        transport = ("channel", "grpc")[i % 2]
        request = pb.InvokeRequest(
            guid=guid, method="incr", args=codec.pack(1), timeout=10.0, caller_node="n2"
        )
        kinds.add((transport, _outcome(client, transport, request)))
    assert kinds == {("channel", "not_authorized"), ("grpc", "not_authorized")}, kinds
    # None of them ran, and the atom stayed where nothing but the client calls it.
    assert client.atom(unique_name).get() == 0
    assert client.locate(unique_name).node == "n1"
    # The same calls without the claim run as ever.
    plain = pb.InvokeRequest(guid=guid, method="incr", args=codec.pack(1), timeout=10.0)
    assert {_outcome(client, t, plain) for t in ("channel", "grpc")} == {"result"}
    assert client.atom(unique_name).get() == 2
