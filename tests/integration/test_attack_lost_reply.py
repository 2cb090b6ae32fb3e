"""Exactly once when a call's (or a message's) reply is lost on the wire and its atom
moves (docs/DESIGN.md §4).

A proxy between the caller and node n1's call listener passes the request
and then drops the reply and cuts the connection: the call ran, its caller
does not know. Meanwhile the atom moves to n2 — by itself, right after that
very call (``move_to``), or by an operator's ``migrate``. The caller retries
the same request id on the other transport (gRPC, at the node it knew, which
forwards) and on the channel at the new node: each copy gets the first
outcome, and the atom's state shows the call ran once. A ``send`` whose
acknowledgement is lost so is sent again by its sender (``Invoker._retrying``):
its copies, wherever they arrive, are acknowledged and delivered once.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import threading

import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import HermesError
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.node_client import call_address
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


class _LossyProxy:
    """Forwards TCP to ``target``; once ``lose`` is set, the next bytes coming back
    (the reply) are dropped and both connections are cut."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.lose = threading.Event()
        self.lost = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                inside, _ = self._listener.accept()
                outside = socket.create_connection(self._target, timeout=10)
                outside.settimeout(None)
                self._sockets += [inside, outside]
                threading.Thread(target=self._pump, args=(inside, outside, False)).start()
                threading.Thread(target=self._pump, args=(outside, inside, True)).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if replies and self.lose.is_set():
                    self.lost.set()
                    break  # the reply is lost on the wire
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture(scope="module")
def cluster(cluster_factory: ClusterFactory) -> LocalCluster:
    """Two nodes: n1's replies are lost (the plugin's ``client`` calls this cluster)."""
    return cluster_factory(2)


def _lost(client: Client, proxy: _LossyProxy, request: pb.InvokeRequest | pb.SendRequest) -> None:
    """Send ``request`` (a call or a message) to n1 through ``proxy``, whose reply is
    lost on the wire."""
    connection = client.channels.calls.connection(proxy.address)  # handshake passes
    # A first call, answered: what the node sends after the handshake (its TLS
    # session tickets) has passed the proxy before it loses the next bytes back.
    probe = pb.InvokeRequest(guid=request.guid, method="no-such-method", timeout=20.0)
    answer = pb.InvokeReply.FromString(connection.call("invoke", probe.SerializeToString(), 20.0))
    assert answer.WhichOneof("outcome") == "error", answer
    proxy.lose.set()
    kind = "send" if isinstance(request, pb.SendRequest) else "invoke"
    with pytest.raises(HermesError) as caught:
        connection.call(kind, request.SerializeToString(), 20.0)
    assert proxy.lost.is_set(), "the reply was not lost: nothing was tested"
    # The caller cannot tell whether it ran: these kinds say so (§4 step 7).
    assert caught.value.kind in ("unreachable", "communication"), caught.value


def _on_channel(
    client: Client, node: str, kind: str, request: pb.InvokeRequest | pb.SendRequest
) -> bytes:
    """``request`` sent as ``kind`` on ``node``'s call channel; its reply, serialized."""
    address = call_address(client.nodes()[node])
    assert address is not None
    body: bytes = client.channels.calls.connection(address).call(
        kind, request.SerializeToString(), 20.0
    )
    return body


def _retry(client: Client, transport: str, node: str, request: pb.InvokeRequest) -> object:
    if transport == "grpc":
        reply = client.invoker.node_stub(node).Invoke(request, timeout=20.0)
    else:
        reply = pb.InvokeReply.FromString(_on_channel(client, node, "invoke", request))
    assert reply.WhichOneof("outcome") == "result", reply
    return codec.unpack(reply.result)


@pytest.mark.parametrize("checkpoint", ["every-call", "on-request"])
def test_a_lost_reply_of_the_call_that_moved_its_atom_is_answered_once(
    client: Client,
    atoms: dict[str, pathlib.Path],
    unique_name: str,
    checkpoint: str,
) -> None:
    """The lost call is the one that asked to move (``go n2``): the move starts right
    after its reply was written into the cut connection. Its retries find the atom on n2
    and get "n1", where it ran; run again it would answer "n2" (or refuse the move)."""
    client.create(atoms["mover"], name=unique_name, on="n1", checkpoint=checkpoint)
    assert client.atom(unique_name).bump() == 1
    address = call_address(client.nodes()["n1"])
    assert address is not None
    proxy = _LossyProxy(address)
    request = pb.InvokeRequest(
        guid=client.guid_of(unique_name),
        method="go",
        args=codec.pack(["n2"]),
        request_id=f"lost-{unique_name}-go",
        timeout=20.0,
    )
    try:
        _lost(client, proxy, request)
    finally:
        proxy.close()
    wait_until(lambda: client.locate(unique_name).node == "n2", 30.0, "the atom to reach n2")
    assert _retry(client, "grpc", "n1", request) == "n1"  # n1 forwards it to n2
    assert _retry(client, "channel", "n2", request) == "n1"
    assert _retry(client, "grpc", "n2", request) == "n1"
    assert client.atom(unique_name).bump() == 2  # the state moved with it, once
    assert client.locate(unique_name).node == "n2"


def test_a_lost_reply_then_a_migrate_then_a_retry_on_the_other_transport(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n1", checkpoint="every-call")
    address = call_address(client.nodes()["n1"])
    assert address is not None
    proxy = _LossyProxy(address)
    request = pb.InvokeRequest(
        guid=client.guid_of(unique_name),
        method="incr",
        args=codec.pack(5),
        request_id=f"lost-{unique_name}-incr",
        timeout=20.0,
    )
    try:
        _lost(client, proxy, request)
    finally:
        proxy.close()
    client.migrate(unique_name, "n2")
    assert _retry(client, "grpc", "n2", request) == 5
    assert _retry(client, "channel", "n1", request) == 5  # forwarded to n2
    assert client.atom(unique_name).get() == 5
    # The Client's own retry of that id, through whatever transport it picks.
    assert client.atom(unique_name, request_id=request.request_id).incr(5) == 5
    assert client.atom(unique_name).get() == 5


def _resend(client: Client, transport: str, node: str, request: pb.SendRequest) -> None:
    """What the sender's retry does: the same message again, at ``node``."""
    if transport == "grpc":
        reply = client.invoker.node_stub(node).Send(request, timeout=20.0)
    else:
        reply = pb.SendReply.FromString(_on_channel(client, node, "send", request))
    assert reply.WhichOneof("outcome") is None, reply


@pytest.mark.parametrize("checkpoint", ["every-call", "on-request"])
def test_a_send_whose_acknowledgement_is_lost_is_delivered_once(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str, checkpoint: str
) -> None:
    """The daemon counts every message its handler ran. One message, whose
    acknowledgement was lost, is sent again at n1, then (after the receiver moved) at
    n1, which forwards it, and at n2, on both transports: it was handled once."""
    client.create(atoms["daemon"], name=unique_name, on="n1", checkpoint=checkpoint)
    address = call_address(client.nodes()["n1"])
    assert address is not None
    proxy = _LossyProxy(address)
    request = pb.SendRequest(
        guid=client.guid_of(unique_name),
        code=7,
        payload=b"once",
        request_id=client.invoker.request_ids.next(),
    )
    try:
        _lost(client, proxy, request)
    finally:
        proxy.close()
    counter = client.atom(unique_name)
    wait_until(lambda: counter.count() == 1, 20.0, "the first copy to be handled")
    _resend(client, "grpc", "n1", request)
    client.migrate(unique_name, "n2")
    _resend(client, "channel", "n1", request)  # forwarded to n2
    _resend(client, "grpc", "n2", request)
    _resend(client, "channel", "n2", request)
    client.invoker.send(unique_name, 7, b"another")  # a new message is delivered
    wait_until(lambda: counter.count() >= 2, 20.0, "the second message to be handled")
    assert counter.count() == 2
