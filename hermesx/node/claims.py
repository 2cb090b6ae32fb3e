"""Fields of a request only a node may set, refused to every other role (docs/DESIGN.md §10).

An ``InvokeRequest`` carries ``caller_node`` for the follow-caller placement
(§4): the node whose atom made the call. Only a node's :class:`Invoker` sets
it; a client or gateway that sets it would count its calls as an atom's on
that node and steer where follow-caller atoms live (and label its spans as
that node's). The certificate's role says who called, so the field is
refused (``not_authorized``, the atom not run) to every role but ``node``,
on gRPC and the call channel alike. On an insecure cluster there are no
roles, and anyone may set anything.

A ``SendRequest`` carries ``chain``, the sending call's chain: a durable
(``every-call``) receiver on it acknowledges the message before a checkpoint
holds it, since the checkpoint of its own running call will (§4 "Exactly
once"). A client that put the receiver on a chain of its own had its
messages acknowledged unstored, and a kill -9 of the node lost them: the
field is refused the same way.
"""

from __future__ import annotations

from hermesx.core.errors import NotAuthorizedError
from hermesx.rpc import roles
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.security import PeerIdentity
from hermesx.rpc.status import pb_error

__all__ = ["refuse_node_fields", "refuse_send_chain"]


def refuse_node_fields(
    request: pb.InvokeRequest, peer: PeerIdentity | None, node: str
) -> pb.InvokeReply | None:
    """The refusal of ``request`` when ``peer`` (None: no TLS) set a field only a node
    sets; None when it may go on. Called only when ``caller_node`` is set: the common
    call pays nothing."""
    what = f"invoke of {request.method} on atom {request.guid}: caller_node is"
    refusal = _not_a_node(peer, node, what)
    return None if refusal is None else pb.InvokeReply(error=refusal)


def refuse_send_chain(
    request: pb.SendRequest, peer: PeerIdentity | None, node: str
) -> pb.SendReply | None:
    """The refusal of a message whose ``chain`` ``peer`` (None: no TLS) may not set; None
    when it may go on. Called only when ``chain`` is set: a client's message pays nothing."""
    refusal = _not_a_node(peer, node, f"a message to atom {request.guid}: its call chain is")
    return None if refusal is None else pb.SendReply(error=refusal)


def _not_a_node(peer: PeerIdentity | None, node: str, what: str) -> pb.Error | None:
    """``not_authorized`` for ``what`` (a field, set) when ``peer`` is not a node."""
    if peer is None or peer.role == roles.NODE:
        return None
    refusal = NotAuthorizedError(f"node {node} refused {what} set only by nodes, not by {peer}")
    return pb_error(refusal)
