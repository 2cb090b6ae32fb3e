"""The call channel on real node processes: calls use it, and bad input on it harms no one.

Nodes advertise the channel in their name-service record and clients, nodes
forwarding and atoms calling use it; a node without one (``--call-listen
off``) is called over gRPC, and gRPC's Invoke answers as before
(docs/DESIGN.md §4.1). Garbage, an HTTP request, a frame announcing 4 GiB, a
truncated frame, an unknown kind, a stranger's certificate or none, and a
thousand idle connections each end that connection with a one-line reason in
the node's log, while a caller in the background sees every call succeed.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import ssl
import struct
from collections.abc import Iterator

import msgpack
import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import HermesError
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.rpc import security
from hermesx.rpc.node_client import call_address
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.testing.callers import BackgroundCaller
from hermesx.testing.clusters import part_log, wait_for_log
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mixed(cluster_factory: ClusterFactory) -> LocalCluster:
    """n1, n2 with the call channel; n3 an older-style node called over gRPC only."""
    return cluster_factory(["n1", "n2", NodeSpec("n3", options=("--call-listen", "off"))])


@pytest.fixture
def client(mixed: LocalCluster) -> Iterator[Client]:
    with Client(mixed.zk, mixed.name) as c:
        yield c


def _call_address(client: Client, node: str) -> str:
    found = call_address(client.nodes()[node])
    assert found is not None, f"node {node} advertises no call channel"
    return found


# -- calls take the channel -------------------------------------------------------------


def test_nodes_advertise_the_channel_and_calls_take_it(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    nodes = client.nodes()
    assert call_address(nodes["n3"]) is None
    client.create(atoms["counter"], name=unique_name, on="n1")
    assert client.atom(unique_name).incr(5) == 5
    # The client's one connection to n1's listener carried the call.
    connection = client.channels.calls.connection(_call_address(client, "n1"))
    assert connection.closed is None
    assert client.atom(unique_name).incr(1) == 6


def test_forwarding_across_channel_and_grpc_nodes_keeps_its_hops(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    # n1 -> n3 (gRPC only) -> n2: the trace shows every hop whatever carried it.
    client.create(atoms["counter"], name=unique_name, on="n1")
    client.migrate(unique_name, "n3")
    client.migrate(unique_name, "n2")
    outcome = client.invoke(unique_name, "incr", codec.pack(1), via="n1", trace=True)
    assert codec.unpack(outcome.result) == 1
    events = [(hop.node, hop.event) for hop in outcome.trace]
    assert ("n2", "ran") in events
    assert any(event == "forward" for _, event in events)


def test_grpc_invoke_answers_as_before(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n2")
    guid = client.guid_of(unique_name)
    stub = client.invoker.node_stub("n2")
    request = pb.InvokeRequest(guid=guid, method="incr", args=codec.pack(2), timeout=10)
    reply = stub.Invoke(request, timeout=10)
    assert codec.unpack(reply.result) == 2
    missing = stub.Invoke(pb.InvokeRequest(guid=guid, method="nope", timeout=10), timeout=10)
    assert missing.error.kind == "method"


def test_error_kinds_cross_the_channel(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n1")
    with pytest.raises(HermesError) as caught:
        client.invoke(unique_name, "no_such_method", b"")
    assert caught.value.kind == "method"


# -- bad input on the listener -------------------------------------------------------


@pytest.fixture
def background(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> Iterator[BackgroundCaller]:
    client.create(atoms["counter"], name=unique_name, on="n1")
    with BackgroundCaller(client, unique_name) as caller:
        yield caller
    assert caller.failures == []
    assert caller.calls >= 6


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _raw(address: str, data: bytes) -> None:
    """Send ``data`` on a plain connection and read until the node closes it."""
    with socket.create_connection(_host_port(address), timeout=10) as sock:
        sock.sendall(data)
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass


@contextlib.contextmanager
def _tls(mixed: LocalCluster, address: str, cert: str | None = "client") -> Iterator[ssl.SSLSocket]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    certs = security.load_certs(mixed.tls_dir)
    context.load_verify_locations(certs.ca_cert)
    if cert is not None:
        context.load_cert_chain(certs.cert(cert), certs.key(cert))
    with (
        socket.create_connection(_host_port(address), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=security.TARGET_NAME) as sock,
    ):
        yield sock


def _until_closed(sock: ssl.SSLSocket) -> bytes:
    received = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(4096):
            received += chunk
    return received


def _frame(obj: object) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    return struct.pack("!I", len(data)) + data


def _logged(mixed: LocalCluster, text: str) -> None:
    log = wait_for_log(mixed, "node-n1", text)
    lines = [line for line in log.splitlines() if text in line]
    assert lines and all("closed the call connection" in line for line in lines), lines


def test_plain_garbage_and_http_end_at_the_handshake(
    mixed: LocalCluster, client: Client, background: BackgroundCaller
) -> None:
    address = _call_address(client, "n1")
    _raw(address, bytes(range(256)) * 16)
    _raw(address, b"GET / HTTP/1.1\r\nHost: n1\r\n\r\n")
    _logged(mixed, "TLS handshake refused")


def test_frames_that_break_the_rules_end_their_connection(
    mixed: LocalCluster, client: Client, background: BackgroundCaller
) -> None:
    address = _call_address(client, "n1")
    cases: list[tuple[bytes, str]] = [
        (b"\xde\xad\xbe\xef" + b"\x00" * 64, "a frame announcing 3735928559 bytes"),
        (struct.pack("!I", 2**32 - 1), "a frame announcing 4294967295 bytes"),
        (struct.pack("!I", 8) + b"\xc1" * 8, "a frame that is not msgpack"),
        (_frame([0, 7, "no-such-kind", 5.0, b""]), "a request of unknown kind 'no-such-kind'"),
    ]
    for data, reason in cases:
        with _tls(mixed, address) as sock:
            sock.sendall(data)
            goodbye = _until_closed(sock)
        assert reason.split(" (")[0] in goodbye.decode(errors="replace")
        _logged(mixed, reason)
    with _tls(mixed, address) as sock:
        sock.sendall(struct.pack("!I", 100) + b"\x90" * 40)  # then the sender goes
    _logged(mixed, "inside a frame (44 bytes of it received)")


def _as_stranger(address: str, context: ssl.SSLContext) -> bytes:
    """What a peer showing ``context``'s certificate (or none) receives for a valid request."""
    received = b""
    # The refusal may come at the handshake or after it.
    with (
        contextlib.suppress(OSError),
        socket.create_connection(_host_port(address), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=security.TARGET_NAME) as sock,
    ):
        sock.sendall(_frame([0, 1, "invoke", 5.0, b""]))
        received = _until_closed(sock)
    return received


def test_strangers_are_refused(
    mixed: LocalCluster, client: Client, background: BackgroundCaller, tmp_path: pathlib.Path
) -> None:
    address = _call_address(client, "n1")
    no_certificate = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_certificate.load_verify_locations(security.load_certs(mixed.tls_dir).ca_cert)
    assert _as_stranger(address, no_certificate) == b""
    _logged(mixed, "PEER_DID_NOT_RETURN_A_CERTIFICATE")
    other = security.init_certs(tmp_path / "other", "other", {"intruder": "client"})
    another_cluster = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    another_cluster.check_hostname = False
    another_cluster.verify_mode = ssl.CERT_NONE
    another_cluster.load_cert_chain(other.cert("intruder"), other.key("intruder"))
    assert _as_stranger(address, another_cluster) == b""
    _logged(mixed, "CERTIFICATE_VERIFY_FAILED")


def test_a_thousand_idle_connections_are_closed(
    mixed: LocalCluster, client: Client, background: BackgroundCaller
) -> None:
    address = _call_address(client, "n1")
    idle: list[socket.socket] = []
    try:
        for _ in range(1000):
            with contextlib.suppress(OSError):
                idle.append(socket.create_connection(_host_port(address), timeout=10))
        # Past the slots, a newcomer is refused or takes the slot of a handshake
        # left unfinished (evicted): both say "open, the limit".
        wait_for_log(mixed, "node-n1", "open, the limit")
        wait_for_log(mixed, "node-n1", "no TLS handshake")

        def all_closed() -> bool:
            return all(_closed_by_peer(sock) for sock in idle)

        wait_until(all_closed, 60.0, "the node to close every idle connection")
    finally:
        for sock in idle:
            sock.close()
    # Each close is a warning, but not each is written: at most 100 of one kind per 10 s
    # (hermesx/observe/logflood.py; test_attack_channel.py tries that bound).
    log = part_log(mixed, "node-n1")
    closed = log.count("no TLS handshake") + log.count("connections open, the limit")
    assert closed > 0


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
