"""Roles on every RPC (issue item 4): the client certificate cannot call internal RPCs.

Before roles, the certificate every client shares could call ``Activate``
(a second active copy of a running atom), ``Forget`` (erase an atom's
records), ``GetCheckpoint`` (read any atom's state) and ``PutCheckpoint``.
Each internal RPC of both services now refuses it with ``not_authorized``
naming the RPC and the role, while the members that need the RPC still reach
it.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator

import grpc
import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import NotAuthorizedError
from hermesx.local.cluster import LocalCluster
from hermesx.rpc import roles
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.status import error_from_rpc
from hermesx.rpc.wire import TLSIdentity, open_channel

pytestmark = pytest.mark.integration

_SERVICES = pb.DESCRIPTOR.services_by_name
_INTERNAL = sorted(key for key, allowed in roles.RPC_ROLES.items() if roles.CLIENT not in allowed)
# The certificate of the local cluster that holds each role.
_CERT_OF_ROLE = {roles.NODE: "n1", roles.STORESITE: "s1", roles.TEST: roles.TEST_CERT_NAME}


def _address(client: Client, service: str) -> str:
    if service in ("Supervisor", "NodeTestHooks"):
        return client.nodes()["n1"].address
    return client.naming.storesites()["s1"].address


def _call(channel: grpc.Channel, key: str, request: object) -> object:
    service, _, method = key.partition("/")
    descriptor = _SERVICES[service].methods_by_name[method]
    output = getattr(pb, descriptor.output_type.name)
    call = channel.unary_unary(
        f"/{pb.DESCRIPTOR.package}.{key}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=output.FromString,
    )
    return call(request, timeout=10)


def _empty_request(key: str) -> object:
    service, _, method = key.partition("/")
    return getattr(pb, _SERVICES[service].methods_by_name[method].input_type.name)()


@pytest.fixture
def member_channels(cluster: LocalCluster, client: Client) -> Iterator[dict[str, grpc.Channel]]:
    """Channels showing a member's certificate, by (role, service)."""
    opened: dict[str, grpc.Channel] = {}
    for role, name in _CERT_OF_ROLE.items():
        for service in _SERVICES:
            opened[f"{role}/{service}"] = open_channel(
                _address(client, service), tls=TLSIdentity(cluster.tls_dir, name, cluster.name)
            )
    try:
        yield opened
    finally:
        for channel in opened.values():
            channel.close()


@pytest.mark.parametrize("key", _INTERNAL)
def test_the_client_certificate_is_refused_on_every_internal_rpc(client: Client, key: str) -> None:
    service = key.partition("/")[0]
    channel = client.channels.get(_address(client, service))

    with pytest.raises(grpc.RpcError) as info:
        _call(channel, key, _empty_request(key))

    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    err = error_from_rpc(info.value, f"{service.lower()} of the cluster")
    assert isinstance(err, NotAuthorizedError)
    assert err.kind == "not_authorized"
    message = str(err)
    assert f"refused {key}: role client may not call it" in message
    assert "\n" not in message


@pytest.mark.parametrize("key", _INTERNAL)
def test_the_roles_an_internal_rpc_is_for_still_reach_it(
    member_channels: dict[str, grpc.Channel], key: str
) -> None:
    service = key.partition("/")[0]
    for role in sorted(roles.RPC_ROLES[key]):
        channel = member_channels[f"{role}/{service}"]
        try:
            _call(channel, key, _empty_request(key))
        except grpc.RpcError as exc:
            # An empty request is refused by the handler for what it lacks, not by role.
            assert exc.code() != grpc.StatusCode.PERMISSION_DENIED, (role, exc.details())
            assert "not_authorized" not in (exc.details() or ""), (role, exc.details())


def test_a_client_cannot_activate_a_second_copy_forget_or_read_an_atom(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    guid = client.create(atoms["counter"], name=unique_name, on="n1")
    assert client.atom(unique_name).incr(5) == 5
    n2 = pbg.SupervisorStub(client.channels.get(_address_of_node(client, "n2")))
    storesite = pbg.StoresiteStub(client.channels.get(_address(client, "Storesite")))

    attempts = {
        "Supervisor/Activate": lambda: n2.Activate(
            pb.ActivateRequest(guid=guid, tad=pb.TAD(node="n2", age=99)), timeout=10
        ),
        "Storesite/Forget": lambda: storesite.Forget(pb.GuidRequest(guid=guid), timeout=10),
        "Storesite/GetCheckpoint": lambda: storesite.GetCheckpoint(
            pb.GuidRequest(guid=guid), timeout=10
        ),
        "Storesite/PutCheckpoint": lambda: storesite.PutCheckpoint(
            pb.CheckpointRequest(guid=guid, tad=pb.TAD(node="n1", age=1), snapshot=b"x"),
            timeout=10,
        ),
        "Storesite/PutCheckpointDelta": lambda: storesite.PutCheckpointDelta(
            pb.CheckpointDelta(
                head=pb.CheckpointRequest(guid=guid, tad=pb.TAD(node="n1", age=1), snapshot=b"x")
            ),
            timeout=10,
        ),
    }
    for key, attempt in attempts.items():
        with pytest.raises(grpc.RpcError) as info:
            attempt()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, key
        assert f"refused {key}: role client" in (info.value.details() or ""), key

    # One copy, on n1, with every acknowledged call; the storesite still knows it.
    assert client.atom(unique_name).incr(1) == 6
    assert client.locate(unique_name).node == "n1"
    reply = n2.Locate(pb.LocateRequest(guid=guid), timeout=10)
    assert not reply.active_here
    client.passivate(unique_name)
    assert client.atom(unique_name).get() == 6
    assert codec.unpack(client.invoke(guid, "get", codec.pack(None)).result) == 6


def _address_of_node(client: Client, node: str) -> str:
    return client.nodes()[node].address


def _pre_roles_copy(cluster: LocalCluster, into: pathlib.Path) -> pathlib.Path:
    """The cluster's client files, with a client certificate issued before roles existed."""
    import datetime
    import shutil

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    into.mkdir(mode=0o700)
    for name in ("ca.pem", "zk-client.secret"):
        shutil.copy(cluster.tls_dir / name, into / name)
    ca_key = serialization.load_pem_private_key((cluster.tls_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((cluster.tls_dir / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("hermesx"),
                    x509.UniformResourceIdentifier(f"hermesx://{cluster.name}/client"),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (into / "client.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (into / "client.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return into


def test_the_cli_prints_a_refusal_in_one_line_naming_rpc_and_role(
    cluster: LocalCluster,
    client: Client,
    atoms: dict[str, pathlib.Path],
    unique_name: str,
    tmp_path: pathlib.Path,
) -> None:
    import subprocess
    import sys

    client.create(atoms["counter"], name=unique_name, on="n1")
    tls = _pre_roles_copy(cluster, tmp_path / "old-tls")
    done = subprocess.run(
        [sys.executable, "-m", "hermesx", "invoke", unique_name, "incr", "1", "--tls", str(tls)],
        env={"PATH": "/usr/bin:/bin", "HERMESX_ZK": cluster.zk, "HERMESX_CLUSTER": cluster.name},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert re.match(
        r"error: (node n1|storesite s1) refused (Supervisor/Invoke|Storesite/Locate): role none",
        lines[0],
    ), lines[0]
    assert client.atom(unique_name).get() == 0
