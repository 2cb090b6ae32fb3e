"""The node's call channel: invocations and messages over lean frames (docs/DESIGN.md §4.1).

The node mounts a :class:`~hermesx.rpc.callserver.CallServer` next to its
gRPC server with two request kinds, ``invoke`` and ``send``, whose bodies
are the ``InvokeRequest`` / ``SendRequest`` of protos/hermesx.proto and
whose replies are ``InvokeReply`` / ``SendReply``. Both go to the same
:class:`~hermesx.node.dispatch.Dispatcher` methods as gRPC's ``Invoke`` and
``Send``: one dispatch behind both transports. The frame's deadline bounds
the request's own ``timeout``, so time spent queued counts against the call.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor

from google.protobuf.message import DecodeError

from hermesx.core.errors import UnreachableError
from hermesx.node.claims import refuse_node_fields
from hermesx.node.config import NodeConfig
from hermesx.node.dispatch import Dispatcher
from hermesx.observe import tracing
from hermesx.rpc.callserver import Call, CallServer, parse_body
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.wire import TLSIdentity

__all__ = ["INVOKE", "SEND", "serve_calls"]

INVOKE, SEND = "invoke", "send"
_parse_invoke = pb.InvokeRequest.FromString


def serve_calls(
    dispatcher: Dispatcher, config: NodeConfig, tls: TLSIdentity | None, workers: Executor
) -> tuple[CallServer, str] | None:
    """Start node ``config.name``'s call listener, its requests run by ``workers`` (the
    node's one pool, which its gRPC server uses too: an invocation takes one of the
    node's workers whichever way it came); it and its address (None when off)."""
    listen = config.call_address()
    if listen is None:
        return None
    server = CallServer(f"node {config.name}", workers=workers, tls=tls, limits=config.call_limits)
    name = config.name

    def invoke(call: Call) -> bytes:
        try:
            request = _parse_invoke(call.body)  # (parse_body's work, one call less)
        except DecodeError:
            request = parse_body(pb.InvokeRequest, call)  # raises: what was wrong
        if request.caller_node and (refused := refuse_node_fields(request, call.peer, name)):
            return refused.SerializeToString()  # type: ignore[no-any-return]
        left = call.deadline - time.monotonic()  # (call.remaining(), one frame less)
        if request.timeout <= 0 or request.timeout > left:
            request.timeout = left
        if call.meta:
            with tracing.with_context(call.meta):
                return dispatcher.serve_invoke(request).SerializeToString()  # type: ignore[no-any-return]
        reply: bytes = dispatcher.serve_invoke(request).SerializeToString()
        return reply

    def send(call: Call) -> bytes:
        reply: bytes = dispatcher.serve_send(parse_body(pb.SendRequest, call)).SerializeToString()
        return reply

    # Both run on the connection's own thread when it has no other (docs/DESIGN.md §4.1).
    server.register(INVOKE, invoke, "Supervisor/Invoke", inline=True)
    server.register(SEND, send, "Supervisor/Send", inline=True)
    try:
        # "auto" asks for the port after gRPC's; any free port serves as well,
        # since callers find it in the node's record.
        return server, server.start(listen, any_port_else=config.call_listen == "auto")
    except UnreachableError:
        server.stop()
        raise
