"""Mutual TLS between hermesx processes: members talk, strangers are refused and logged.

The server is a real process (a Supervisor servicer answering Status, served
with hermesx.rpc.security's credentials and peer check) on 127.0.0.1; clients are
real gRPC channels from this process.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest

from hermesx.rpc import security
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.testing.reaper import tethered
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration

CLUSTER, OTHER = "blue", "green"

_SERVER = textwrap.dedent(
    """
    import logging, sys
    from concurrent import futures
    import grpc
    from hermesx.rpc import security
    from hermesx.rpc.proto import hermesx_pb2 as pb, hermesx_pb2_grpc as pbg

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    directory, cluster, name = sys.argv[1:4]

    class Status(pbg.SupervisorServicer):
        def Status(self, request, context):
            peer = security.peer_identity(context)
            return pb.NodeStatus(name=name, tags=[peer.cluster, peer.name] if peer else [])

    server = grpc.server(
        futures.ThreadPoolExecutor(4),
        interceptors=[security.PeerCheckInterceptor(cluster, server=f"node {name}")],
    )
    pbg.add_SupervisorServicer_to_server(Status(), server)
    port = server.add_secure_port(
        "127.0.0.1:0", security.server_credentials(directory, name)
    )
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)
    """
)


@dataclass
class ServerProcess:
    address: str
    log: pathlib.Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> str:
        wait_until(lambda: needle in self.log_text(), timeout, f"the server to log {needle!r}")
        return self.log_text()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    base = tmp_path_factory.mktemp("tls")
    ours = security.init_certs(base / CLUSTER, CLUSTER, ["n1", "n2"]).directory
    theirs = security.init_certs(base / OTHER, OTHER, ["n1", "n2"]).directory
    return {CLUSTER: ours, OTHER: theirs}


@pytest.fixture(scope="module")
def server(
    dirs: dict[str, pathlib.Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "n1.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    with open(log, "wb") as stderr:
        process = tethered(
            [sys.executable, "-c", _SERVER, str(dirs[CLUSTER]), CLUSTER, "n1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        assert line.isdigit(), f"server did not start: {log.read_text(errors='replace')}"
        yield ServerProcess(f"127.0.0.1:{line}", log)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _status(address: str, credentials: grpc.ChannelCredentials | None) -> pb.NodeStatus:
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials, options=security.channel_options())
    with channel:
        reply: pb.NodeStatus = pbg.SupervisorStub(channel).Status(pb.Empty(), timeout=5)
        return reply


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_members_of_a_cluster_talk_over_mutual_tls(
    server: ServerProcess, dirs: dict[str, pathlib.Path]
) -> None:
    reply = _status(server.address, security.channel_credentials(dirs[CLUSTER], "n2"))

    assert reply.name == "n1"
    # The server knows who called, from the caller's certificate.
    assert list(reply.tags) == [CLUSTER, "n2"]


def test_a_client_without_a_certificate_is_refused_and_logged(
    server: ServerProcess, dirs: dict[str, pathlib.Path]
) -> None:
    ca_only = grpc.ssl_channel_credentials((dirs[CLUSTER] / "ca.pem").read_bytes())

    error = _refused(lambda: _status(server.address, ca_only))

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    text = server.wait_for_log("PEER_DID_NOT_RETURN_A_CERTIFICATE")
    assert security.HANDSHAKE_REFUSAL_MARKER in text
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text


def test_a_certificate_of_another_clusters_ca_is_refused_and_logged(
    server: ServerProcess, dirs: dict[str, pathlib.Path]
) -> None:
    # The stranger even trusts our CA: only its own certificate gives it away.
    stranger = grpc.ssl_channel_credentials(
        (dirs[CLUSTER] / "ca.pem").read_bytes(),
        (dirs[OTHER] / "n2.key").read_bytes(),
        (dirs[OTHER] / "n2.pem").read_bytes(),
    )

    error = _refused(lambda: _status(server.address, stranger))

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in server.wait_for_log("CERTIFICATE_VERIFY_FAILED")


def test_a_plaintext_client_is_refused(server: ServerProcess) -> None:
    before = server.log_text().count(security.HANDSHAKE_REFUSAL_MARKER)

    error = _refused(lambda: _status(server.address, None))

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    wait_until(
        lambda: server.log_text().count(security.HANDSHAKE_REFUSAL_MARKER) != before,
        5.0,
        "the refusal of a plaintext client to be logged",
    )


def test_a_certificate_of_our_ca_marked_for_another_cluster_is_refused_and_logged(
    server: ServerProcess, dirs: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    # A CA shared between clusters: the handshake passes, the marker does not.
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("ca.pem", "ca.key"):
        (shared / name).write_bytes((dirs[CLUSTER] / name).read_bytes())
    security._ensure_cert(security.ClusterCerts(shared, OTHER), "intruder")
    intruder = grpc.ssl_channel_credentials(
        (dirs[CLUSTER] / "ca.pem").read_bytes(),
        (shared / "intruder.key").read_bytes(),
        (shared / "intruder.pem").read_bytes(),
    )

    error = _refused(lambda: _status(server.address, intruder))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"cluster {OTHER}" in (error.details() or "")
    text = server.wait_for_log("CN=intruder")
    assert "node n1 refused /hermesx.v1.Supervisor/Status from ipv4:127.0.0.1:" in text
    assert "CN=intruder" in text


def test_a_client_refuses_a_server_of_another_cluster(
    dirs: dict[str, pathlib.Path],
) -> None:
    class Impostor(pbg.SupervisorServicer):  # type: ignore[misc]
        def Status(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.NodeStatus:
            return pb.NodeStatus(name="impostor")

    impostor = grpc.server(futures.ThreadPoolExecutor(2))
    pbg.add_SupervisorServicer_to_server(Impostor(), impostor)
    port = impostor.add_secure_port("127.0.0.1:0", security.server_credentials(dirs[OTHER], "n1"))
    impostor.start()
    try:
        error = _refused(
            lambda: _status(f"127.0.0.1:{port}", security.channel_credentials(dirs[CLUSTER], "n2"))
        )
    finally:
        impostor.stop(0).wait()

    assert error.code() == grpc.StatusCode.UNAVAILABLE
