"""Unit tests of hermesx.rpc.security: the cluster CA, certificates, secrets, peer checks."""

from __future__ import annotations

import ipaddress
import logging
import pathlib
import stat
import threading
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from hermesx.core.errors import ConfigurationError, InvalidNameError
from hermesx.rpc import roles, security


def _cert(path: pathlib.Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_certs_makes_a_ca_naming_the_cluster_and_certificates_it_signed(
    tmp_path: pathlib.Path,
) -> None:
    certs = security.init_certs(tmp_path / "tls", "blue", ["n1", "s1"])

    ca = _cert(certs.ca_cert)
    assert "blue" in ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert certs.names() == ["n1", "s1"]
    for name in ("n1", "s1"):
        cert = _cert(certs.cert(name))
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
        assert {"localhost", name, security.TARGET_NAME} <= set(
            sans.get_values_for_type(x509.DNSName)
        )
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"hermesx://blue/{name}",
            "hermesx-role://blue/node",
        ]


def test_keys_and_secret_are_private_files(tmp_path: pathlib.Path) -> None:
    certs = security.init_certs(tmp_path / "tls", "blue", ["n1"])

    assert _mode(certs.directory) == 0o700
    assert _mode(certs.key("n1")) == 0o600
    assert _mode(certs.directory / "ca.key") == 0o600
    assert _mode(certs.secret) == 0o600
    # Certificates are not secret, but nothing of a cluster is any other user's business.
    assert _mode(certs.cert("n1")) == 0o600
    assert _mode(certs.ca_cert) == 0o600


def test_init_certs_is_idempotent_and_never_replaces_the_ca(tmp_path: pathlib.Path) -> None:
    first = security.init_certs(tmp_path, "blue", ["n1"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    secret = security.zk_auth(tmp_path)

    again = security.init_certs(tmp_path, "blue", ["n1", "n2"])

    assert again == first
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {k: after[k] for k in before} == before
    assert security.zk_auth(tmp_path) == secret
    _cert(again.cert("n2")).verify_directly_issued_by(_cert(again.ca_cert))


def test_a_directory_of_another_cluster_is_refused(tmp_path: pathlib.Path) -> None:
    security.init_certs(tmp_path, "blue")

    with pytest.raises(ConfigurationError, match="cluster blue"):
        security.init_certs(tmp_path, "green", ["n1"])
    with pytest.raises(ConfigurationError, match="cluster blue, not green"):
        security.issue_cert(tmp_path, "green", "n1")
    assert not (tmp_path / "n1.pem").exists()


def test_issue_cert_adds_a_process_later_and_needs_the_ca(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigurationError, match="no cluster CA"):
        security.issue_cert(tmp_path / "empty", "blue", "n9")

    security.init_certs(tmp_path, "blue")
    certs = security.issue_cert(tmp_path, "blue", "n9")
    _cert(certs.cert("n9")).verify_directly_issued_by(_cert(certs.ca_cert))


def test_a_certificate_of_another_ca_is_reissued(tmp_path: pathlib.Path) -> None:
    certs = security.init_certs(tmp_path / "a", "blue", ["n1"])
    other = security.init_certs(tmp_path / "b", "blue", ["n1"])
    certs.cert("n1").write_bytes(other.cert("n1").read_bytes())

    security.issue_cert(certs.directory, "blue", "n1")

    _cert(certs.cert("n1")).verify_directly_issued_by(_cert(certs.ca_cert))


def test_process_names_are_validated(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InvalidNameError):
        security.init_certs(tmp_path, "blue", ["../escape"])
    with pytest.raises(ConfigurationError, match="sequence"):
        security.init_certs(tmp_path, "blue", "n1")


def test_name_that_is_not_a_host_name_keeps_its_uri_marker(tmp_path: pathlib.Path) -> None:
    certs = security.init_certs(tmp_path, "blue", ["node_1"])

    sans = _cert(certs.cert("node_1")).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "node_1" not in sans.value.get_values_for_type(x509.DNSName)
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "hermesx://blue/node_1",
        "hermesx-role://blue/node",
    ]


def test_concurrent_init_makes_one_ca_that_signed_every_certificate(
    tmp_path: pathlib.Path,
) -> None:
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            security.init_certs(tmp_path, "blue", [name])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"n{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    ca = _cert(tmp_path / "ca.pem")
    for i in range(6):
        _cert(tmp_path / f"n{i}.pem").verify_directly_issued_by(ca)


def test_zk_auth_differs_between_clusters(tmp_path: pathlib.Path) -> None:
    security.init_certs(tmp_path / "a", "blue")
    security.init_certs(tmp_path / "b", "green")

    user, password = security.zk_auth(tmp_path / "a")
    assert user == "hermesx" and len(password) >= 32
    assert security.zk_auth(tmp_path / "b")[1] != password


def test_credentials_for_an_unknown_process_name_the_missing_file(
    tmp_path: pathlib.Path,
) -> None:
    security.init_certs(tmp_path, "blue", ["n1"])

    assert isinstance(security.server_credentials(tmp_path, "n1"), grpc.ServerCredentials)
    assert isinstance(security.channel_credentials(tmp_path, "n1"), grpc.ChannelCredentials)
    with pytest.raises(ConfigurationError, match="key of n2"):
        security.channel_credentials(tmp_path, "n2")
    with pytest.raises(ConfigurationError, match="no cluster CA"):
        security.server_credentials(tmp_path / "missing", "n1")


def test_channel_options_pin_the_name_every_certificate_carries() -> None:
    assert ("grpc.ssl_target_name_override", security.TARGET_NAME) in security.channel_options()


# ------------------------------------------------------------ peer checks


class _Aborted(Exception):
    pass


class _FakeContext:
    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer_identities(self) -> list[bytes] | None:
        return self._auth.get("x509_subject_alternative_name")

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise _Aborted(details)


def _context(uri: str | None, role: str | None = "node") -> Any:
    auth: dict[str, list[bytes]] = {"transport_security_type": [b"ssl"]}
    if uri is not None:
        auth["peer_uri"] = [uri.encode()]
        auth["x509_subject_alternative_name"] = [b"hermesx", b"127.0.0.1", uri.encode()]
        if role is not None and uri.startswith("hermesx://"):
            cluster = uri[len("hermesx://") :].partition("/")[0]
            auth["x509_subject_alternative_name"].append(
                f"hermesx-role://{cluster}/{role}".encode()
            )
        auth["x509_subject"] = [b"CN=n2,OU=blue"]
    return _FakeContext(auth)


def test_peer_identity_reads_the_cluster_marker() -> None:
    assert security.peer_identity(_context("hermesx://blue/n2")) == security.PeerIdentity(
        "blue", "n2", "node"
    )
    assert security.peer_identity(_context("hermesx://blue/n2", None)) == security.PeerIdentity(
        "blue", "n2"
    )
    assert security.peer_identity(_context("https://example.org/x")) is None
    assert security.peer_identity(_context(None)) is None


class _Details:
    method = "/hermesx.v1.Supervisor/Status"


def _interceptor_handler() -> tuple[Any, list[str]]:
    served: list[str] = []

    def status(request: Any, context: Any) -> str:
        served.append(request)
        return "ok"

    handler = grpc.unary_unary_rpc_method_handler(status)
    interceptor = security.PeerCheckInterceptor("blue", server="node n1")
    wrapped = interceptor.intercept_service(lambda _details: handler, _Details())
    return wrapped, served


@pytest.mark.parametrize(
    ("uri", "reason"),
    [("hermesx://green/n2", "cluster green"), (None, "no certificate")],
)
def test_interceptor_refuses_and_logs_peers_of_other_clusters(
    uri: str | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrapped, served = _interceptor_handler()
    context = _context(uri)

    with caplog.at_level(logging.WARNING, logger="hermesx.rpc.security"), pytest.raises(_Aborted):
        wrapped.unary_unary("req", context)

    assert served == []
    assert context.aborted is not None
    assert context.aborted[0] == grpc.StatusCode.UNAUTHENTICATED
    assert reason in context.aborted[1]
    assert any(
        "node n1 refused /hermesx.v1.Supervisor/Status from ipv4:127.0.0.1:40000" in r.getMessage()
        and reason in r.getMessage()
        for r in caplog.records
    )


def test_interceptor_admits_members_of_its_cluster() -> None:
    wrapped, served = _interceptor_handler()

    assert wrapped.unary_unary("req", _context("hermesx://blue/n2")) == "ok"
    assert served == ["req"]


def test_names_of_the_longest_allowed_length_work(tmp_path: pathlib.Path) -> None:
    cluster, name = "c" * 128, "n" * 128

    certs = security.init_certs(tmp_path, cluster, [name])

    assert security.load_certs(tmp_path).cluster == cluster
    sans = _cert(certs.cert(name)).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"hermesx://{cluster}/{name}",
        f"hermesx-role://{cluster}/node",
    ]


# ------------------------------------------------------------ roles


def test_certificates_carry_the_role_they_were_issued_for(tmp_path: pathlib.Path) -> None:
    certs = security.init_certs(
        tmp_path, "blue", {"n1": roles.NODE, "s1": roles.STORESITE, "client": roles.CLIENT}
    )
    security.issue_cert(tmp_path, "blue", "g1", roles.GATEWAY)

    assert security.cert_role(certs.directory, "n1") == "node"
    assert security.cert_role(certs.directory, "s1") == "storesite"
    assert security.cert_role(certs.directory, "client") == "client"
    assert security.cert_role(certs.directory, "g1") == "gateway"


def test_a_certificate_asked_for_in_another_role_is_replaced(tmp_path: pathlib.Path) -> None:
    certs = security.init_certs(tmp_path, "blue", ["x1"])
    before = certs.cert("x1").read_bytes()

    security.issue_cert(tmp_path, "blue", "x1", roles.NODE)
    assert certs.cert("x1").read_bytes() == before
    security.issue_cert(tmp_path, "blue", "x1", roles.CLIENT)

    assert security.cert_role(certs.directory, "x1") == "client"


def test_an_unknown_role_is_refused_in_one_line(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigurationError, match="role 'admin' is not one of node, storesite"):
        security.init_certs(tmp_path, "blue", {"x": "admin"})


class _Named:
    def __init__(self, method: str) -> None:
        self.method = method


def _guarded(method: str) -> Any:
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: "ok")
    interceptor = security.PeerCheckInterceptor("blue", server="node n1")
    return interceptor.intercept_service(lambda _details: handler, _Named(method))


@pytest.mark.parametrize(
    ("method", "role"),
    [
        ("/hermesx.v1.Supervisor/Activate", "client"),
        ("/hermesx.v1.Supervisor/Activate", "node"),
        ("/hermesx.v1.NodeTestHooks/StashPut", "node"),
        ("/hermesx.v1.Storesite/Forget", "client"),
        ("/hermesx.v1.Storesite/GetCheckpoint", "gateway"),
        ("/hermesx.v1.Storesite/AdoptAtom", "node"),
        ("/hermesx.v1.Supervisor/Activate", None),
    ],
)
def test_interceptor_refuses_a_role_the_rpc_is_not_for(
    method: str, role: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    context = _context("hermesx://blue/x1", role)

    with caplog.at_level(logging.WARNING, logger="hermesx.rpc.security"), pytest.raises(_Aborted):
        _guarded(method).unary_unary("req", context)

    assert context.aborted is not None
    code, details = context.aborted
    assert code == grpc.StatusCode.PERMISSION_DENIED
    rpc = method.rpartition(".")[2]
    assert details.startswith(f"not_authorized: node n1 refused {rpc}: role {role or 'none'}")
    assert any(rpc in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("method", "role"),
    [
        ("/hermesx.v1.Supervisor/Activate", "storesite"),
        ("/hermesx.v1.Supervisor/StageCopy", "node"),
        ("/hermesx.v1.Supervisor/ActivateCopy", "node"),
        ("/hermesx.v1.Supervisor/DiscardCopy", "node"),
        ("/hermesx.v1.NodeTestHooks/StashPut", "test"),
        ("/hermesx.v1.Supervisor/Invoke", "client"),
        ("/hermesx.v1.Supervisor/Migrate", "gateway"),
        ("/hermesx.v1.Storesite/PutCheckpoint", "node"),
        ("/hermesx.v1.Storesite/AdoptAtom", "storesite"),
        ("/hermesx.v1.Storesite/MoveHome", "client"),
        ("/hermesx.v1.Storesite/ListAtoms", "client"),
    ],
)
def test_interceptor_admits_a_role_the_rpc_is_for(method: str, role: str) -> None:
    assert _guarded(method).unary_unary("req", _context("hermesx://blue/x1", role)) == "ok"


def test_every_rpc_of_the_wire_has_its_roles_written_down() -> None:
    from hermesx.rpc.proto import hermesx_pb2 as pb

    listed = {
        f"{service.name}/{method.name}"
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert listed == set(roles.RPC_ROLES)
    # An RPC nobody listed is for the cluster's members only.
    assert roles.allowed_roles("/hermesx.v1.Supervisor/NotYetListed") == roles.MEMBER_ROLES


def test_certs_init_gives_each_name_the_role_asked_for(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hermesx import cli

    argv = ["certs", "init", "--cluster", "blue", "--dir", str(tmp_path)]
    assert cli.main([*argv, "--storesites", "s1", "--nodes", "n1,n2", "--names", "gateway:g1"]) == 0

    names = security.load_certs(tmp_path).names()
    found = {name: security.cert_role(tmp_path, name) for name in names}
    assert found == {
        "client": "client",
        "g1": "gateway",
        "n1": "node",
        "n2": "node",
        "s1": "storesite",
    }
    assert _mode(tmp_path / "zk-client.secret") == 0o600
    assert security.zk_auth(tmp_path, "client")[0] == "hermesx-client"

    capsys.readouterr()
    assert cli.main([*argv, "--names", "s2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--names entry 's2' has no role" in err
    assert cli.main([*argv, "--nodes", "x", "--storesites", "x"]) == 1
    assert "two roles" in capsys.readouterr().err


def test_one_interceptor_tells_callers_apart_call_after_call() -> None:
    guarded = _guarded("/hermesx.v1.Supervisor/Activate")
    for _ in range(3):
        assert guarded.unary_unary("req", _context("hermesx://blue/s1", "storesite")) == "ok"
        client = _context("hermesx://blue/client", "client")
        with pytest.raises(_Aborted):
            guarded.unary_unary("req", client)
        assert client.aborted is not None and "role client" in client.aborted[1]
        stranger = _context("hermesx://green/s1", "storesite")
        with pytest.raises(_Aborted):
            guarded.unary_unary("req", stranger)
        assert stranger.aborted is not None
        assert stranger.aborted[0] == grpc.StatusCode.UNAUTHENTICATED
