"""Attacks on "a retried call never runs twice" while the atom moves (docs/DESIGN.md §4
"Exactly once", §5).

Copies of one request id sent at once to both nodes, on both transports, all through
a move: whichever copy runs first, every other copy gets its outcome (or a retryable
refusal), and the atom's state shows each id ran once. A message (``send``) sent so
is handled once. An id reused for another call after the move is refused at the
destination: the digest of the call travels with the table.
"""

from __future__ import annotations

import contextlib
import pathlib
import threading
from collections.abc import Callable

import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import ConfigurationError, HermesError
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.node_client import call_address
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# (kind, serialized request) -> serialized reply, on one transport at one node.
Wire = Callable[[str, bytes], bytes]
ROUNDS = 40  # copies of the whole batch each sender sends, at most (bounded loop)


@pytest.fixture(scope="module")
def two(cluster_factory: ClusterFactory) -> LocalCluster:
    return cluster_factory(2)


def _wires(client: Client, node: str) -> list[Wire]:
    """The call channel and gRPC of ``node``."""
    address = call_address(client.nodes()[node])
    assert address is not None, f"node {node} has no call channel"
    connection = client.channels.calls.connection(address)
    stub = client.invoker.node_stub(node)

    def channel(kind: str, body: bytes) -> bytes:
        reply: bytes = connection.call(kind, body, 20.0)
        return reply

    def grpc(kind: str, body: bytes) -> bytes:
        if kind == "invoke":
            return stub.Invoke(pb.InvokeRequest.FromString(body), timeout=20.0).SerializeToString()  # type: ignore[no-any-return]
        return stub.Send(pb.SendRequest.FromString(body), timeout=20.0).SerializeToString()  # type: ignore[no-any-return]

    return [channel, grpc]


def _storm(client: Client, name: str, kind: str, bodies: list[bytes]) -> list[tuple[int, bytes]]:
    """Send every body over and over to both nodes on both transports while ``name``
    moves from n1 to n2; return the replies, each with the index of its body."""
    replies: list[tuple[int, bytes]] = []
    moved = threading.Event()

    def hammer(wire: Wire) -> None:
        for _ in range(ROUNDS):
            for index, body in enumerate(bodies):
                # A refusal on the wire: the copy may or may not have arrived.
                with contextlib.suppress(HermesError):
                    replies.append((index, wire(kind, body)))
            if moved.is_set():
                return

    threads = [
        threading.Thread(target=hammer, args=(wire,))
        for node in ("n1", "n2")
        for wire in _wires(client, node)
    ]
    for thread in threads:
        thread.start()
    try:
        client.migrate(name, "n2")
    finally:
        moved.set()
        for thread in threads:
            thread.join(60)
    assert client.locate(name).node == "n2"
    return replies


def test_one_id_sent_to_both_nodes_at_once_while_its_atom_moves_runs_once(
    two: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    with Client(two.zk, two.name) as client:
        client.create(atoms["counter"], name=unique_name, on="n1", checkpoint="every-call")
        guid = client.guid_of(unique_name)
        ids = [client.invoker.request_ids.next() for _ in range(4)]
        requests = [
            pb.InvokeRequest(
                guid=guid, method="incr", args=codec.pack(1), request_id=i, timeout=20.0
            )
            for i in ids
        ]
        bodies = [r.SerializeToString() for r in requests]
        seen: dict[str, set[object]] = {i: set() for i in ids}
        for index, body in _storm(client, unique_name, "invoke", bodies):
            reply = pb.InvokeReply.FromString(body)
            if reply.WhichOneof("outcome") == "result":
                seen[ids[index]].add(codec.unpack(reply.result))
        # Each id settled by the client's own retry: its first outcome, one of 1..4.
        firsts = {i: client.atom(unique_name, request_id=i).incr(1) for i in ids}
        assert sorted(firsts.values()) == [1, 2, 3, 4], firsts
        assert client.atom(unique_name).get() == 4
        for i in ids:
            assert seen[i] <= {firsts[i]}, (i, seen[i], firsts[i])


def test_one_message_sent_to_both_nodes_at_once_while_its_atom_moves_is_handled_once(
    two: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    with Client(two.zk, two.name) as client:
        client.create(atoms["daemon"], name=unique_name, on="n1", checkpoint="every-call")
        guid = client.guid_of(unique_name)
        requests = [
            pb.SendRequest(
                guid=guid, code=1, payload=bytes([n]), request_id=client.invoker.request_ids.next()
            )
            for n in range(3)
        ]
        bodies = [r.SerializeToString() for r in requests]
        _storm(client, unique_name, "send", bodies)
        for request in requests:  # every message arrived at least once by now
            client.invoker.send(unique_name, 1, request.payload, request_id=request.request_id)
        client.invoker.send(unique_name, 1, b"last")
        daemon = client.atom(unique_name)
        wait_until(lambda: daemon.count() >= 4, 20.0, "the four messages to be handled")
        assert daemon.count() == 4


def test_an_id_reused_for_another_call_after_a_move_is_refused_at_the_destination(
    two: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    with Client(two.zk, two.name) as client:
        client.create(atoms["counter"], name=unique_name, on="n1")
        request_id = client.invoker.request_ids.next()
        assert client.atom(unique_name, request_id=request_id).incr(5) == 5
        client.migrate(unique_name, "n2")
        with pytest.raises(ConfigurationError, match="another call"):
            client.atom(unique_name, request_id=request_id).incr(7)
        with pytest.raises(ConfigurationError, match="another call"):
            client.invoker.send(unique_name, 1, b"", request_id=request_id)
        assert client.atom(unique_name, request_id=request_id).incr(5) == 5
        assert client.atom(unique_name).get() == 5
