"""Attacks on the call channel of real nodes: error kinds and deadlines equal gRPC's.

docs/DESIGN.md §4.1: both transports reach one dispatch, so a request that
fails fails with the same kind whichever carried it — also a call queued
behind a busy atom past its deadline, arguments over the limit, a request
naming no atom — and a caller's own mistake on a shared connection costs
only its own call.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator

import grpc
import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import HermesError
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.node_client import call_address
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.status import error_from_rpc
from hermesx.testing.plugin import ClusterFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def pair(cluster_factory: ClusterFactory) -> LocalCluster:
    return cluster_factory(2)


@pytest.fixture
def client(pair: LocalCluster) -> Iterator[Client]:
    with Client(pair.zk, pair.name) as c:
        yield c


# The caller waits this much longer than the request's own timeout: the node's
# answer (the atom's deadline) must come first, on a loaded machine too.
SLACK_S = 10.0


def _outcome(client: Client, transport: str, request: pb.InvokeRequest) -> str:
    """The error kind ``request`` to n1 ends with (``result`` when it succeeds)."""
    try:
        if transport == "channel":
            address = call_address(client.nodes()["n1"])
            assert address is not None
            body = client.channels.calls.connection(address).call(
                "invoke", request.SerializeToString(), request.timeout + SLACK_S
            )
            reply = pb.InvokeReply.FromString(body)
        else:
            stub = client.invoker.node_stub("n1")
            reply = stub.Invoke(request, timeout=request.timeout + SLACK_S)
    except HermesError as exc:
        return exc.kind
    except grpc.RpcError as exc:
        return error_from_rpc(exc, "node n1", "Invoke").kind
    which = reply.WhichOneof("outcome")
    return reply.error.kind if which == "error" else str(which)


def test_error_kinds_are_the_same_on_both_transports(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    counter = client.create(atoms["counter"], name=unique_name, on="n1")
    trap = client.create(atoms["trap"], name=f"{unique_name}t", on="n1")
    away = client.create(atoms["counter"], name=f"{unique_name}a", on="n2")

    def request(guid: str, method: str, args: bytes, timeout: float = 5.0) -> pb.InvokeRequest:
        return pb.InvokeRequest(guid=guid, method=method, args=args, timeout=timeout)

    cases = {
        "no such method": request(counter, "nope", b""),
        "arguments it refuses": request(counter, "incr", codec.pack("x")),
        "a trap": request(trap, "boom", codec.pack(None)),
        "arguments over the limit": request(counter, "incr", b"\x00" * (5 * 2**20)),
        "a GUID that is no GUID": request("not-a-guid", "incr", b""),
        "a hop limit passed": pb.InvokeRequest(
            guid=away, method="get", timeout=5.0, hops=50, hop_limit=1
        ),
    }
    for what, sent in cases.items():
        over_channel = _outcome(client, "channel", sent)
        over_grpc = _outcome(client, "grpc", sent)
        assert over_channel == over_grpc, (what, over_channel, over_grpc)
        assert over_channel != "result", what


def test_a_call_queued_behind_a_busy_atom_ends_at_its_deadline_on_both_transports(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    guid = client.create(atoms["spin"], name=unique_name, on="n1")
    busy = pb.InvokeRequest(guid=guid, method="spin", timeout=8.0)
    spinning = threading.Thread(target=_outcome, args=(client, "grpc", busy))
    spinning.start()
    try:
        queued = pb.InvokeRequest(guid=guid, method="ok", timeout=1.0)
        kinds = {
            transport: _outcome(client, transport, queued) for transport in ("channel", "grpc")
        }
    finally:
        spinning.join(30)
    assert kinds["channel"] == kinds["grpc"], kinds
    assert kinds["channel"] in ("timeout", "deadline"), kinds
    assert client.atom(unique_name).ok() == 1
