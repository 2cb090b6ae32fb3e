"""Checkpoints over the storesite's call channel, real processes (docs/DESIGN.md §4.1, §6).

The storesite advertises its call channel as ``call`` in its name-service
record; a node sends durable calls' checkpoints over it (the storesite counts
them by transport) and each is acknowledged once stored, as over gRPC; the
checkpoints of calls made at once share group commits, though one connection
carries them all, and those of several atoms ready together travel in one
``checkpoint-batch`` request (which the storesite's record lists). The
client certificate sending a checkpoint kind on the channel is refused
``not_authorized``, as on gRPC; nodes told ``HERMESX_CALLS=grpc`` checkpoint
over gRPC.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from hermesx.client import Client
from hermesx.core.errors import NotAuthorizedError
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.node_client import call_address
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.storesite_batch import CALL_KINDS, CHECKPOINT_BATCH, encode_batch
from hermesx.rpc.storesite_client import CHECKPOINT, CHECKPOINT_DELTA, StoresiteClient
from hermesx.testing.metrics import metric_value, scrape
from hermesx.testing.plugin import ClusterFactory

pytestmark = pytest.mark.integration

_REQUESTS = "hermesx_storesite_checkpoint_requests_total"


def _by_transport(cluster: LocalCluster) -> dict[str, float]:
    families = scrape(cluster, "storesite-s1")
    transports = ("call", "call-batch", "grpc")
    return {t: metric_value(families, _REQUESTS, transport=t) for t in transports}


def _status(client: Client) -> tuple[int, int]:
    """The storesite's checkpoints written and group commits so far."""
    address = client.naming.storesites()["s1"].address
    with StoresiteClient(address, sid="s1", channels=client.channels) as site:
        status = site.status()
    return status.checkpoints_written, status.group_commits


def _durable_calls(cluster: LocalCluster, atom: pathlib.Path, name: str) -> dict[str, float]:
    """Five acknowledged calls of an every-call atom: checkpoint requests by transport."""
    with Client(cluster.zk, cluster.name) as client:
        client.create(atom, name=name, on="n1", checkpoint="every-call")
        before, written = _by_transport(cluster), _status(client)[0]
        for expected in range(1, 6):
            assert client.atom(name).incr(1) == expected
        # Each acknowledged call's checkpoint was stored before its reply.
        assert _status(client)[0] >= written + 5
        after = _by_transport(cluster)
    return {t: after[t] - before[t] for t in after}


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.zk, cluster.name) as c:
        yield c


def test_checkpoints_of_durable_calls_travel_over_the_channel(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    assert call_address(client.naming.storesites()["s1"]) is not None
    sent = _durable_calls(cluster, atoms["counter"], unique_name)
    assert sent["call"] >= 5
    assert sent["grpc"] == 0


def test_checkpoints_arriving_together_on_one_connection_share_commits(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    # Eight callers on eight atoms of one node: their checkpoints share the node's one
    # connection to the storesite, whose reading thread commits one itself; those that
    # arrive meanwhile must still be read, and join the next group.
    names = [f"{unique_name}-{i}" for i in range(8)]
    for name in names:
        client.create(atoms["counter"], name=name, on="n1", checkpoint="every-call")
    written, commits = _status(client)

    def calls(name: str) -> list[int]:
        return [client.atom(name).incr(1) for _ in range(20)]

    with ThreadPoolExecutor(len(names)) as pool:
        counts = list(pool.map(calls, names))
    assert counts == [list(range(1, 21))] * len(names)
    written_now, commits_now = _status(client)
    assert written_now - written >= 20 * len(names)
    assert commits_now - commits < written_now - written


def test_checkpoints_ready_together_travel_in_one_request(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    # The storesite lists the batch kind in its record; a node whose atoms' checkpoints
    # are ready together sends them as one request, and each call still gets its own
    # acknowledged, durable outcome. (Twelve atoms: more than the eight requests a node
    # keeps under way to a storesite, so that some checkpoints find no free place.)
    kinds = client.naming.storesites()["s1"].data.get(CALL_KINDS)
    assert isinstance(kinds, list) and CHECKPOINT_BATCH in kinds
    names = [f"{unique_name}-{i}" for i in range(12)]
    for name in names:
        client.create(atoms["counter"], name=name, on="n1", checkpoint="every-call")
    before = _by_transport(cluster)

    def calls(name: str) -> list[int]:
        return [client.atom(name).incr(1) for _ in range(30)]

    with ThreadPoolExecutor(len(names)) as pool:
        counts = list(pool.map(calls, names))
    assert counts == [list(range(1, 31))] * len(names)
    after = _by_transport(cluster)
    assert after["call-batch"] > before["call-batch"]
    assert after["grpc"] == before["grpc"]
    # Each atom's state, read back from its storesite, holds every acknowledged call.
    for name in names:
        client.passivate(name)
        assert client.atom(name).get() == 30


def test_the_client_certificate_is_refused_the_checkpoint_kinds(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    guid = client.create(atoms["counter"], name=unique_name, on="n1", checkpoint="every-call")
    assert client.atom(unique_name).incr(3) == 3
    address = call_address(client.naming.storesites()["s1"])
    assert address is not None
    connection = client.channels.calls.connection(address, "storesite s1")
    head = pb.CheckpointRequest(guid=guid, tad=pb.TAD(node="n1", age=1), snapshot=b"x", seq=99)
    bodies = {
        CHECKPOINT: head.SerializeToString(),
        CHECKPOINT_DELTA: pb.CheckpointDelta(head=head).SerializeToString(),
        CHECKPOINT_BATCH: encode_batch([(CHECKPOINT, head.SerializeToString())] * 2),
    }
    for kind, body in bodies.items():
        with pytest.raises(NotAuthorizedError) as caught:
            connection.call(kind, body, 10)
        assert caught.value.kind == "not_authorized"
        assert f"refused {kind}: role client may not call it" in str(caught.value)
    # Nothing of it was stored: the atom goes on from its own state.
    assert client.atom(unique_name).incr(1) == 4
    client.passivate(unique_name)
    assert client.atom(unique_name).get() == 4


def test_nodes_told_grpc_checkpoint_over_grpc(
    cluster_factory: ClusterFactory,
    atoms: dict[str, pathlib.Path],
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HERMESX_CALLS", "grpc")  # the node processes inherit it
    grpc_only = cluster_factory(1)
    sent = _durable_calls(grpc_only, atoms["counter"], unique_name)
    assert sent["grpc"] >= 5
    assert sent["call"] == 0
