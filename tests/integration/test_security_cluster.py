"""A local cluster runs with mutual TLS and a name-service secret; outsiders are refused."""

from __future__ import annotations

import pathlib

import grpc
import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import HermesError, NotAuthorizedError
from hermesx.local.cluster import LocalCluster
from hermesx.rpc import security
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.wire import TLSIdentity, open_channel
from hermesx.testing.clusters import wait_for_log

pytestmark = pytest.mark.integration


def _node_address(client: Client, node: str) -> str:
    return client.nodes()[node].address


def _refused(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    code: grpc.StatusCode = info.value.code()
    return code


def test_a_client_without_a_certificate_cannot_invoke_create_or_migrate(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    guid = client.create(atoms["counter"], name=unique_name, on="n1")
    address = _node_address(client, "n1")
    with grpc.insecure_channel(address) as channel:
        stub = pbg.SupervisorStub(channel)
        invoke = pb.InvokeRequest(guid=guid, method="incr", args=codec.pack(100), request_id="x")
        assert _refused(lambda: stub.Invoke(invoke, timeout=5)) == grpc.StatusCode.UNAVAILABLE
        create = pb.CreateRequest(module=atoms["counter"].read_bytes(), meta=pb.AtomMeta())
        assert _refused(lambda: stub.Create(create, timeout=5)) == grpc.StatusCode.UNAVAILABLE
        move = pb.MigrateRequest(guid=guid, destination="n2")
        assert _refused(lambda: stub.Migrate(move, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    # Nothing of that reached the atom, and the refusal is in the node's log.
    assert client.atom(unique_name).get() == 0
    assert client.locate(unique_name).node == "n1"
    wait_for_log(cluster, "node-n1", "Handshake failed", 10.0)


def test_a_certificate_of_another_cluster_is_refused(
    cluster: LocalCluster,
    client: Client,
    atoms: dict[str, pathlib.Path],
    unique_name: str,
    tmp_path: pathlib.Path,
) -> None:
    guid = client.create(atoms["counter"], name=unique_name, on="n2")
    other = tmp_path / "other-tls"
    security.init_certs(other, "othercluster", ["client"])
    stranger = TLSIdentity(other, "client", "othercluster")
    with open_channel(_node_address(client, "n2"), tls=stranger) as channel:
        stub = pbg.SupervisorStub(channel)
        invoke = pb.InvokeRequest(guid=guid, method="incr", args=codec.pack(1), request_id="y")
        assert _refused(lambda: stub.Invoke(invoke, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    # The name service refuses the stranger's secret too.
    with pytest.raises(HermesError), Client(cluster.zk, cluster.name, tls=other) as outsider:
        outsider.names()
    assert client.atom(unique_name).get() == 0


def test_the_name_service_refuses_writers_without_the_cluster_secret(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n3")
    from hermesx.routing.naming import Naming

    anonymous = Naming(cluster.zk, cluster.name)  # no secret
    with pytest.raises(NotAuthorizedError):
        anonymous.start()
        anonymous.bind("intruder", "s1:" + "0" * 32)
    anonymous.close()
    assert "intruder" not in client.names()
    assert client.atom(unique_name).incr(1) == 1
