"""Attacks on the call channel of real nodes: error kinds and deadlines equal gRPC's.

docs/DESIGN.md §4.1: both transports reach one dispatch, so a request that
fails fails with the same kind whichever carried it — also a call queued
behind a busy atom past its deadline, arguments over the limit, a request
naming no atom — and a caller's own mistake on a shared connection costs
only its own call.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator

import msgpack
import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.local.cluster import LocalCluster
from hermesx.rpc import security
from hermesx.rpc.frames import Error, Frame, FrameReader, Reply, encode_request
from hermesx.rpc.node_client import call_address
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.testing.clusters import part_log
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.transports import invoke_outcome

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(cluster_factory: ClusterFactory) -> LocalCluster:
    """Two nodes: the requests go to n1 (the plugin's ``client`` calls this cluster)."""
    return cluster_factory(2)


# The caller waits this much longer than the request's own timeout: the node's
# answer (the atom's deadline) must come first, on a loaded machine too.
SLACK_S = 10.0


def _outcome(
    client: Client, transport: str, request: pb.InvokeRequest, wait: float | None = None
) -> str:
    """The error kind ``request`` to n1 ends with (``result`` when it succeeds); the
    caller waits ``wait`` seconds (the request's timeout and some slack when None)."""
    wait = request.timeout + SLACK_S if wait is None else wait
    return invoke_outcome(client, transport, request, wait)


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


@pytest.mark.parametrize("own", [-1.0, 0.0, float("nan"), float("inf"), 1e300])
def test_a_request_naming_a_nonsensical_timeout_of_its_own_is_served_alike(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str, own: float
) -> None:
    """The InvokeRequest's own ``timeout`` comes from the caller (any language, through
    gRPC): a negative, NaN, infinite or huge one must neither break the node nor
    differ between the transports; the node's default or the caller's deadline bounds
    the call."""
    guid = client.create(atoms["counter"], name=unique_name, on="n1")
    request = pb.InvokeRequest(guid=guid, method="incr", args=codec.pack(1), timeout=own)
    kinds = {t: _outcome(client, t, request, wait=20.0) for t in ("channel", "grpc")}
    assert kinds == {"channel": "result", "grpc": "result"}, kinds
    assert client.atom(unique_name).get() == 2


@pytest.mark.parametrize("own", [float("inf"), 1e300])
def test_a_huge_timeout_of_its_own_behind_a_busy_atom_waits_its_turn(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str, own: float
) -> None:
    """Behind a busy atom the node waits for the turn up to the request's own timeout:
    an infinite or huge one must wait (bounded by the caller's deadline) and then run,
    on both transports, not fail in the node's wait."""
    guid = client.create(atoms["spin"], name=unique_name, on="n1")
    kinds = {}
    for transport in ("channel", "grpc"):
        busy = pb.InvokeRequest(guid=guid, method="spin", timeout=3.0)
        spinning = threading.Thread(target=_outcome, args=(client, "grpc", busy))
        spinning.start()
        try:
            time.sleep(0.5)  # the spin has the atom
            queued = pb.InvokeRequest(guid=guid, method="ok", timeout=own)
            kinds[transport] = _outcome(client, transport, queued, wait=30.0)
        finally:
            spinning.join(30)
    assert kinds == {"channel": "result", "grpc": "result"}, kinds


# -- bad input beyond the listener's own tests ---------------------------------------------


def _frame(obj: object) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    return struct.pack("!I", len(data)) + data


def _raw_frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


@contextlib.contextmanager
def _tls(cluster: LocalCluster, address: str) -> Iterator[ssl.SSLSocket]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    certs = security.load_certs(cluster.tls_dir)
    context.load_verify_locations(certs.ca_cert)
    context.load_cert_chain(certs.cert("client"), certs.key("client"))
    host, _, port = address.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=20) as raw,
        context.wrap_socket(raw, server_hostname=security.TARGET_NAME) as sock,
    ):
        yield sock


def _replies(sock: ssl.SSLSocket, count: int) -> list[Frame]:
    reader, frames = FrameReader(), []
    while len(frames) < count:
        data = sock.recv(65536)
        if not data:
            break
        frames += reader.feed(data)
    return frames


def test_bad_frames_end_only_their_connection_and_duplicate_ids_are_each_answered(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n1")
    address = call_address(client.nodes()["n1"])
    assert address is not None
    # A connection of our own keeps a call in flight while the others misbehave.
    proxy = client.atom(unique_name)
    assert proxy.incr(1) == 1
    bad = {
        "a reply frame": _frame([1, 5, b""]),
        "request id 0": _frame([0, 0, "invoke", 5.0, b""]),
        "nested 100,000 deep": _raw_frame(b"\x91" * 100_000 + b"\xc0"),
        "an array announcing 4 G items": _raw_frame(b"\xdd\xff\xff\xff\xff"),
        "a non-UTF-8 kind": _raw_frame(
            b"\x95\x00\x01\xa2\xff\xfe\xcb" + struct.pack("!d", 1.0) + b"\xc4\x00"
        ),
        "a meta of 100,000 entries": _frame(
            [0, 1, "invoke", 5.0, b"", {str(i): "" for i in range(100_000)}]
        ),
        "a NaN timeout": _frame([0, 1, "invoke", float("nan"), b""]),
    }
    for what, data in bad.items():
        with _tls(cluster, address) as sock:
            sock.sendall(data)
            goodbye = _replies(sock, 1)
            assert len(goodbye) == 1 and isinstance(goodbye[0], Error), (what, goodbye)
            assert goodbye[0].id == 0 and goodbye[0].kind == "communication", (what, goodbye)
            assert sock.recv(1) == b"", what  # and the connection ends
        assert proxy.incr(1) >= 2, what
    # Two requests with one id in flight: the caller broke the rule, yet each is
    # answered and the connection stays.
    request = pb.InvokeRequest(guid=client.guid_of(unique_name), method="get", timeout=5.0)
    with _tls(cluster, address) as sock:
        body = request.SerializeToString()
        sock.sendall(_frame([0, 9, "invoke", 5.0, body]) * 2)
        answers = _replies(sock, 2)
        assert [type(f).__name__ for f in answers] == ["Reply", "Reply"], answers
        sock.sendall(_frame([0, 10, "invoke", 5.0, body]))
        (last,) = _replies(sock, 1)
        assert isinstance(last, Reply) and last.id == 10
    log = part_log(cluster, "node-n1")
    assert log.count("closed the call connection") >= len(bad)


# -- requests run on their connection's own thread -----------------------------------------


def _invoke_frame(id: int, guid: str, method: str, args: bytes, timeout: float) -> bytes:
    request = pb.InvokeRequest(guid=guid, method=method, args=args, timeout=timeout)
    return encode_request(id, "invoke", timeout, request.SerializeToString(), None)


def test_quick_calls_pipelined_behind_a_spinning_and_a_queued_call_pass_them_once_each(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """One burst on one connection: a call that spins (run on the connection's own
    thread, so another thread must take the reading over), a call queued behind it on
    the same atom (its handler yields the reading), then 12 quick calls to another
    atom (fewer than its 16 calls at once). Each quick call is answered before the
    slow two, each ran exactly once."""
    spin = client.create(atoms["spin"], name=f"{unique_name}s", on="n1")
    counter = client.create(atoms["counter"], name=unique_name, on="n1")
    address = call_address(client.nodes()["n1"])
    assert address is not None
    burst = _invoke_frame(1, spin, "spin", b"", 2.0) + _invoke_frame(2, spin, "ok", b"", 10.0)
    burst += b"".join(
        _invoke_frame(10 + i, counter, "incr", codec.pack(1), 10.0) for i in range(12)
    )
    with _tls(cluster, address) as sock:
        sock.sendall(burst)
        frames = _replies(sock, 14)
    order = [f.id for f in frames]
    assert sorted(order) == [1, 2, *range(10, 22)], order
    assert order.index(1) > 11 and order.index(2) > 11, order
    values = sorted(
        codec.unpack(pb.InvokeReply.FromString(f.body).result)
        for f in frames
        if isinstance(f, Reply) and f.id >= 10
    )
    assert values == list(range(1, 13)), values
    assert client.atom(unique_name).get() == 12


def test_a_host_without_a_certificate_cannot_grow_the_nodes_log_without_end(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """Any host that reaches the call port, with no certificate, opens connections that
    fail their TLS handshake: each was one warning line in the node's log (300 lines in
    under half a second here), a log it could grow without end. At most 100 lines of
    one kind go out per 10 s now (``hermesx.observe.logflood``), and calls go on."""
    client.create(atoms["counter"], name=unique_name, on="n1")
    address = call_address(client.nodes()["n1"])
    assert address is not None
    host, _, port = address.rpartition(":")
    before = part_log(cluster, "node-n1").count("closed the call connection")
    for _ in range(300):
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05hello")  # a TLS record that is no handshake
            with contextlib.suppress(OSError):
                while sock.recv(4096):  # until the node closes it
                    pass
    assert client.atom(unique_name).incr(1) == 1  # and after it, its lines are written
    written = part_log(cluster, "node-n1").count("closed the call connection") - before
    assert 1 <= written <= 100, written
