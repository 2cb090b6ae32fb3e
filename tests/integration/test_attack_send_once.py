"""A message is delivered once, through moves of its sender and a crash of its
receiver's node (docs/DESIGN.md §4 "Exactly once", §6).

Every ``send`` carries a request id of its sender's (``hx1.…``), recorded in the
receiving atom's reply table with the message queued in its mailbox: both move,
checkpoint and recover together, so a copy of a message that arrives again is
acknowledged without a second delivery. A durable (``every-call``) receiver
acknowledges a message only once the mailbox holding it is stored.
"""

from __future__ import annotations

import pathlib
import threading
import time

import pytest

from hermesx.client import Client
from hermesx.core.errors import HermesError
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.node_client import call_address
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _claim_chain(client: Client, transport: str, guid: str) -> str:
    """A message to ``guid`` on n1 whose ``chain`` names ``guid`` (only nodes may set it),
    sent over ``transport``: ``acknowledged``, or the error kind it ends with."""
    request = pb.SendRequest(
        guid=guid, code=3, payload=b"claim", request_id=client.invoker.request_ids.next()
    )
    request.chain.append(guid)
    node = "n1"
    try:
        if transport == "channel":
            address = call_address(client.nodes()[node])
            assert address is not None, f"node {node} advertises no call channel"
            body = client.channels.calls.connection(address).call(
                "send", request.SerializeToString(), 20.0
            )
            reply = pb.SendReply.FromString(body)
        else:
            reply = client.invoker.node_stub(node).Send(request, timeout=20.0)
    except HermesError as exc:
        return exc.kind
    return reply.error.kind if reply.WhichOneof("outcome") == "error" else "acknowledged"


def test_an_acknowledged_send_to_a_durable_atom_survives_its_nodes_death(
    cluster_factory: ClusterFactory, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """The node is killed right after acknowledging the message: the receiver,
    recovered elsewhere from its checkpoint, handles it (once), and the sender's
    copy of it, arriving after the recovery, is acknowledged and not handled again.

    Before the kill, the client sends two messages claiming the receiver is on their
    call chain (``SendRequest.chain``, :func:`_claim_chain`), which a receiver on it
    acknowledges before a checkpoint holds them: they were acknowledged, and lost."""
    cluster: LocalCluster = cluster_factory(2, session_timeout=2.0)
    with Client(cluster.zk, cluster.name) as client:
        guid = client.create(atoms["daemon"], name=unique_name, on="n1", checkpoint="every-call")
        request = pb.SendRequest(
            guid=guid, code=3, payload=b"kept", request_id=client.invoker.request_ids.next()
        )
        reply = client.invoker.node_stub("n1").Send(request, timeout=20.0)
        assert reply.WhichOneof("outcome") is None, reply
        claims = [_claim_chain(client, transport, guid) for transport in ("channel", "grpc")]
        cluster.kill("node-n1")
        receiver = client.atom(unique_name)
        # Waits for the recovery on n2: every acknowledged message is there.
        assert receiver.count() == 1 + claims.count("acknowledged")
        assert claims == ["not_authorized", "not_authorized"]
        assert client.locate(unique_name).node == "n2"
        reply = client.invoker.node_stub("n2").Send(request, timeout=20.0)
        assert reply.WhichOneof("outcome") is None, reply
        client.invoker.send(unique_name, 3, b"next")
        wait_until(lambda: receiver.count() >= 2, 20.0, "the next message to be handled")
        assert receiver.count() == 2


def test_a_send_to_a_durable_atom_waits_out_its_storesites_outage_and_is_delivered_once(
    cluster_factory: ClusterFactory, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """While the storesite is down the message is queued but cannot be stored: the
    sender hears ``storage`` and sends it again under its id until a checkpoint holds it
    (each copy finds it recorded and is not delivered again)."""
    cluster: LocalCluster = cluster_factory(2, session_timeout=2.0)
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["daemon"], name=unique_name, on="n1", checkpoint="every-call")
        receiver = client.atom(unique_name)
        assert receiver.count() == 0
        cluster.kill("storesite-s1")
        outcome: dict[str, object] = {}

        def send() -> None:
            try:
                client.invoker.send(unique_name, 5, b"through", timeout=40.0)
                outcome["sent"] = True
            except HermesError as exc:
                outcome["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(2.0)  # the outage window
        assert sender.is_alive(), outcome  # not acknowledged before it is stored
        cluster.start_storesite("s1")
        sender.join(60)
        assert outcome == {"sent": True}
        client.invoker.send(unique_name, 5, b"after")
        wait_until(lambda: receiver.count() >= 2, 20.0, "the messages to be handled")
        assert receiver.count() == 2


def test_messages_of_a_sender_that_moved_are_all_delivered(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """A sender's messages restart under a new id series on its new node: none of
    them is taken for a copy of one sent before the move."""
    receiver_name = f"{unique_name}-in"
    client.create(atoms["daemon"], name=receiver_name, on="n2", checkpoint="every-call")
    client.create(atoms["caller"], name=unique_name, on="n1")
    sender = client.atom(unique_name)
    assert sender.send_many([receiver_name, 1, 3]) == 3
    client.migrate(unique_name, "n2")
    assert sender.send_many([receiver_name, 1, 4]) == 4
    receiver = client.atom(receiver_name)
    wait_until(lambda: receiver.count() >= 7, 20.0, "the seven messages to be handled")
    assert receiver.count() == 7


def test_a_durable_atom_sending_to_itself_is_not_held_up_by_its_own_call(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """A message to a durable atom waits for a checkpoint holding it, which needs the
    atom's turn; to itself (on the sending call's chain) the checkpoint of the call that
    sent it holds it: the send does not wait for a turn it holds."""
    client.create(atoms["caller"], name=unique_name, on="n1", checkpoint="every-call")
    sender = client.atom(unique_name)
    assert sender.send_many([unique_name, 1, 2]) == 2
    assert client.locate(unique_name).node == "n1"
