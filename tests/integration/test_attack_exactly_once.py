"""Attacks on exactly-once and durability across the two transports (docs/DESIGN.md §4, §4.1, §6).

A request id names one call whatever carries it: the call channel or gRPC's
``Supervisor/Invoke``. These tests send the same id on both — one after the
other, while the first is still in its checkpoint, after a move, after a kill
-9 of the node — and check that the increment ran once and every copy of the
call got the first outcome, never before that outcome was durable.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Callable

import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.node_client import call_address
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.roles import TEST_CERT_NAME
from hermesx.testing.clusters import part_log
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

Transport = Callable[[Client, str, pb.InvokeRequest], pb.InvokeReply]


def _over_channel(client: Client, node: str, request: pb.InvokeRequest) -> pb.InvokeReply:
    address = call_address(client.nodes()[node])
    assert address is not None, f"node {node} has no call channel"
    connection = client.channels.calls.connection(address)
    body = connection.call("invoke", request.SerializeToString(), request.timeout)
    return pb.InvokeReply.FromString(body)


def _over_grpc(client: Client, node: str, request: pb.InvokeRequest) -> pb.InvokeReply:
    reply: pb.InvokeReply = client.invoker.node_stub(node).Invoke(request, timeout=request.timeout)
    return reply


def _incr(client: Client, name: str, request_id: str) -> pb.InvokeRequest:
    return pb.InvokeRequest(
        guid=client.guid_of(name),
        method="incr",
        args=codec.pack(1),
        request_id=request_id,
        timeout=30.0,
    )


def _result(reply: pb.InvokeReply) -> object:
    assert reply.WhichOneof("outcome") == "result", reply
    return codec.unpack(reply.result)


def _first_held_in_checkpoint(
    two: LocalCluster,
    client: Client,
    request: pb.InvokeRequest,
    replies: dict[str, object],
    paused: str,
) -> threading.Thread:
    """Send ``request`` to n1 over the channel on a thread of its own (its outcome into
    ``replies["first"]``); return once node ``paused`` holds a checkpoint of it."""

    def first() -> None:
        try:
            replies["first"] = _result(_over_channel(client, "n1", request))
        except Exception as exc:
            replies["first"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    wait_until(
        lambda: "paused at checkpoint-snapshot" in part_log(two, f"node-{paused}"),
        30.0,
        f"the first copy's checkpoint on {paused}",
    )
    return thread


@pytest.fixture(scope="module")
def two(cluster_factory: ClusterFactory) -> LocalCluster:
    return cluster_factory(2, session_timeout=2.0)


@pytest.mark.parametrize(
    ("first", "retry"),
    [(_over_channel, _over_grpc), (_over_grpc, _over_channel)],
    ids=["channel-then-grpc", "grpc-then-channel"],
)
def test_a_retry_on_the_other_transport_gets_the_first_outcome(
    two: LocalCluster,
    atoms: dict[str, pathlib.Path],
    unique_name: str,
    first: Transport,
    retry: Transport,
) -> None:
    with Client(two.zk, two.name) as client:
        client.create(atoms["counter"], name=unique_name, on="n1", checkpoint="every-call")
        request = _incr(client, unique_name, f"attack-{unique_name}-1")
        assert _result(first(client, "n1", request)) == 1
        assert _result(retry(client, "n1", request)) == 1
        client.migrate(unique_name, "n2")
        assert _result(retry(client, "n2", request)) == 1
        assert _result(first(client, "n2", request)) == 1
        assert client.atom(unique_name).get() == 1


def test_a_call_that_reaches_the_destination_between_commit_and_activate_fails_no_move(
    two: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """Once a move is committed, a call at the destination settles the staged copy
    itself (the storesite names it); the source's ActivateCopy that follows must then
    find the move done, not fail the migrate of an atom that did move."""
    with (
        Client(two.zk, two.name) as client,
        Client(two.zk, two.name, cert=TEST_CERT_NAME) as tester,
    ):
        client.create(atoms["counter"], name=unique_name, on="n1", checkpoint="every-call")
        assert client.atom(unique_name).incr(1) == 1
        tester.node_client.pause_at(tester.node_member("n1"), "committed", 3.0)
        moved: dict[str, object] = {}

        def move() -> None:
            try:
                moved["tad"] = client.migrate(unique_name, "n2")
            except Exception as exc:
                moved["error"] = exc

        thread = threading.Thread(target=move)
        thread.start()
        wait_until(
            lambda: "paused at committed" in part_log(two, "node-n1"),
            30.0,
            "the move to be committed",
        )
        request = _incr(client, unique_name, f"attack-{unique_name}-3")
        for transport in (_over_channel, _over_grpc):
            assert _result(transport(client, "n2", request)) == 2
        thread.join(60)
        assert "error" not in moved, moved
        assert client.locate(unique_name).node == "n2"
        assert client.atom(unique_name).get() == 2


def test_a_retry_of_a_reentrant_atoms_call_while_it_waits_does_not_run_it_again(
    two: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """A reentrant atom runs calls that arrive while a call of its waits (here, on its
    callee's checkpoint, held 3 s): the retry of that very call, on the other
    transport, must not run it a second time there."""
    with (
        Client(two.zk, two.name) as client,
        Client(two.zk, two.name, cert=TEST_CERT_NAME) as tester,
    ):
        client.create(atoms["caller"], name=unique_name, on="n1", reentrant=True)
        counter = f"{unique_name}c"
        client.create(atoms["counter"], name=counter, on="n2", checkpoint="every-call")
        assert client.atom(counter).incr(1) == 1
        request = pb.InvokeRequest(
            guid=client.guid_of(unique_name),
            method="call",
            args=codec.pack([client.guid_of(counter), "incr", 1]),
            request_id=f"attack-{unique_name}-r",
            timeout=30.0,
        )
        tester.node_client.pause_at(tester.node_member("n2"), "checkpoint-snapshot", 3.0)
        replies: dict[str, object] = {}
        thread = _first_held_in_checkpoint(two, client, request, replies, "n2")
        retry = _over_grpc(client, "n1", request)
        thread.join(30)
        assert replies == {"first": 2}
        # The retry came while the first run waited: refused (its caller sends it
        # again), or answered with the first outcome; never run a second time.
        outcome = retry.WhichOneof("outcome")
        assert (outcome, retry.error.kind) == ("error", "timeout") or _result(retry) == 2, retry
        assert _result(_over_grpc(client, "n1", request)) == 2
        assert client.atom(counter).get() == 2


def test_a_retry_while_the_first_is_in_its_checkpoint_waits_for_it_and_survives_a_kill_9(
    two: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """The first copy runs on the channel and is held in its (delta) checkpoint; the
    retry comes on gRPC meanwhile. Both get the one outcome; after a kill -9 of the node
    the recovered atom still holds it and answers the id from its table.

    Last of the tests on the shared cluster: it kills that cluster's n1."""
    with (
        Client(two.zk, two.name) as client,
        Client(two.zk, two.name, cert=TEST_CERT_NAME) as tester,
    ):
        client.create(atoms["counter"], name=unique_name, on="n1", checkpoint="every-call")
        assert client.atom(unique_name).incr(1) == 1  # a base: the next checkpoint is a delta
        tester.node_client.pause_at(tester.node_member("n1"), "checkpoint-snapshot", 3.0)
        request = _incr(client, unique_name, f"attack-{unique_name}-2")
        replies: dict[str, object] = {}
        thread = _first_held_in_checkpoint(two, client, request, replies, "n1")
        second = _result(_over_grpc(client, "n1", request))
        # The retry was answered only once the checkpoint holding the outcome was
        # acknowledged: the first copy has its reply by now or in a moment.
        thread.join(30)
        assert replies == {"first": 2}
        assert second == 2
        two.kill("node-n1")
        with Client(two.zk, two.name, timeout=60.0) as settled:
            assert settled.atom(unique_name, request_id=request.request_id).incr(1) == 2
            assert settled.atom(unique_name).get() == 2
            assert settled.locate(unique_name).node == "n2"
