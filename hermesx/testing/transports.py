"""One request sent over either transport of a node: the call channel or gRPC (docs/DESIGN.md §4.1).

Tests that must see the same outcome whichever transport carries a call send
the raw ``InvokeRequest`` through :func:`invoke_outcome` once per transport.
"""

from __future__ import annotations

import grpc

from hermesx.client import Client
from hermesx.core.errors import HermesError
from hermesx.rpc.node_client import call_address
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.status import error_from_rpc

__all__ = ["invoke_outcome"]


def invoke_outcome(
    client: Client, transport: str, request: pb.InvokeRequest, wait: float, node: str = "n1"
) -> str:
    """The error kind ``request`` to ``node`` ends with (``result`` when it succeeds).

    ``transport`` is ``channel`` or ``grpc``; the caller waits ``wait`` seconds.
    """
    try:
        if transport == "channel":
            address = call_address(client.nodes()[node])
            assert address is not None, f"node {node} advertises no call channel"
            body = client.channels.calls.connection(address).call(
                "invoke", request.SerializeToString(), wait
            )
            reply = pb.InvokeReply.FromString(body)
        else:
            reply = client.invoker.node_stub(node).Invoke(request, timeout=wait)
    except HermesError as exc:
        return exc.kind
    except grpc.RpcError as exc:
        return error_from_rpc(exc, f"node {node}", "Invoke").kind
    which = reply.WhichOneof("outcome")
    return reply.error.kind if which == "error" else str(which)
