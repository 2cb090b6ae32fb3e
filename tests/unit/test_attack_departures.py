"""Attack: a gRPC call whose channel is closed under it (the peer left the cluster).

routing/departures.py closes the channel of a node that left, to end its calls
at once, and the invoker goes on from the atom's storesite (docs/DESIGN.md
§4.1). A call that had taken its gRPC stub just before (the fallback when no
call connection opens to a dying node) never left: it fails ``unreachable``,
so the invoker goes on elsewhere too, not with a bare ValueError that no
caller handles.
"""

from __future__ import annotations

import pytest

from hermesx.core.errors import UnreachableError
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.status import unary_call
from hermesx.rpc.wire import ChannelPool


def test_a_call_on_a_channel_dropped_under_it_is_unreachable() -> None:
    channels = ChannelPool()
    try:
        stub = channels.stub("127.0.0.1:9", pbg.SupervisorStub)
        channels.drop("127.0.0.1:9")  # the node left: its channel closes
        with pytest.raises(UnreachableError, match="closed channel"):
            unary_call(stub.Invoke, pb.InvokeRequest(guid="g"), 1.0, "node n2", "Invoke(g)")
    finally:
        channels.close()


def test_a_call_whose_channel_closes_as_it_starts_is_unreachable() -> None:
    # grpcio's other wording, with the reason its close gave: seen when departures
    # closed the channel between taking the stub and starting the call.
    def rpc(request: pb.InvokeRequest, timeout: float) -> pb.InvokeReply:
        raise ValueError("Cannot invoke RPC: Channel closed!")

    with pytest.raises(UnreachableError, match="Channel closed"):
        unary_call(rpc, pb.InvokeRequest(guid="g"), 1.0, "node n2", "Invoke(g)")
