"""The node's calls to other nodes: forwarded calls, handing over a moving atom (DESIGN.md §4, §5).

:class:`NodePeer` is one other node, its address looked up once: a move talks
to the destination it started with through every step. Each method makes
one RPC and turns a gRPC failure into the :class:`HermesError` it stands for,
naming the peer, in one place (:meth:`NodePeer._call`).

The hand-over uses ``Accept`` three ways, each a method here: stage a copy
(``commit=false`` with a snapshot), activate it (``commit=true``), discard
it (``commit=false``, empty snapshot).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from hermesx.routing.invoker import Invoker
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.status import error_from_rpc

__all__ = ["NodePeer", "peer"]

_Reply = TypeVar("_Reply")


class NodePeer:
    """Another node of the cluster, as ``label`` names it in errors."""

    __slots__ = ("_label", "_stub", "node")

    def __init__(self, node: str, stub: pbg.SupervisorStub, label: str) -> None:
        self.node = node
        self._stub = stub
        self._label = label

    def _call(self, method: Callable[..., _Reply], request: Any, timeout: float) -> _Reply:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self._label) from exc

    def invoke(self, request: pb.InvokeRequest, timeout: float) -> pb.InvokeReply:
        reply: pb.InvokeReply = self._call(self._stub.Invoke, request, timeout)
        return reply

    def send(self, request: pb.SendRequest, timeout: float) -> pb.SendReply:
        reply: pb.SendReply = self._call(self._stub.Send, request, timeout)
        return reply

    def stage(self, request: pb.AcceptRequest, timeout: float) -> str:
        """Stage the copy ``request`` carries; returns the incarnation that staged it."""
        reply: pb.AcceptReply = self._call(self._stub.Accept, request, timeout)
        return reply.incarnation

    def activate(self, request: pb.AcceptRequest, timeout: float) -> None:
        """Activate the staged copy (or, with a snapshot, the copy ``request`` carries)."""
        self._call(self._stub.Accept, request, timeout)

    def discard(self, request: pb.AcceptRequest, timeout: float) -> None:
        """Discard the copy staged for ``request``'s move."""
        discard = pb.AcceptRequest()
        discard.CopyFrom(request)
        discard.commit = False
        discard.snapshot = b""  # empty snapshot = discard the staged copy
        discard.ClearField("checksum")
        self._call(self._stub.Accept, discard, timeout)


def peer(invoker: Invoker, node: str, *, forwarded_from: str = "") -> NodePeer:
    """Node ``node`` at the address the name service lists now (UnreachableError if none)."""
    stub = invoker.node_stub(node)
    label = f"node {node} (forwarded from {forwarded_from})" if forwarded_from else f"node {node}"
    return NodePeer(node, stub, label)
