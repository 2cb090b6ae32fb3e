"""The typed node client: errors keep their class, and failures name the node and the RPC."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from hermesx.core.errors import MigrationError, NotActiveHereError, UnreachableError
from hermesx.core.identity import TAD
from hermesx.rpc.node_client import NodeAddress, NodeClient
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.status import abort_with


class _MovedAway(pbg.SupervisorServicer):
    """A node that no longer runs any atom it is asked to move."""

    def Migrate(self, request: pb.MigrateRequest, context: grpc.ServicerContext) -> pb.MigrateReply:
        abort_with(context, NotActiveHereError(f"atom {request.guid} is not active on node n1"))

    def Locate(self, request: pb.LocateRequest, context: grpc.ServicerContext) -> pb.LocateReply:
        return pb.LocateReply(tad=pb.TAD(node="n2", age=7), active_here=False, incarnation="i1")


@pytest.fixture
def node() -> Iterator[NodeAddress]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pbg.add_SupervisorServicer_to_server(_MovedAway(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield NodeAddress("n1", f"127.0.0.1:{port}")
    finally:
        server.stop(None)


def test_an_atom_that_moved_away_is_its_own_error_class(node: NodeAddress) -> None:
    client = NodeClient()
    try:
        with pytest.raises(NotActiveHereError, match="is not active on node n1") as info:
            client.migrate(node, "s1:ab", "n3", timeout=5.0)
        assert isinstance(info.value, MigrationError)  # callers catching moves still catch it
        assert info.value.kind == "not_active_here"
        held = client.locate(node, "s1:ab")
        assert (held.tad, held.active_here, held.incarnation) == (TAD("n2", 7), False, "i1")
        assert client.holding(node, "s1:ab") == (None, "i1")
    finally:
        client.close()


def test_a_dead_node_is_named_with_its_address_and_the_rpc() -> None:
    client = NodeClient(timeout=2.0)
    try:
        with pytest.raises(UnreachableError, match=r"node n9 at 127\.0\.0\.1:1 is unreachable"):
            client.checkpoint(NodeAddress("n9", "127.0.0.1:1"), "s1:ab", timeout=2.0)
        assert client.active_atoms(NodeAddress("n9", "127.0.0.1:1")) is None
    finally:
        client.close()
