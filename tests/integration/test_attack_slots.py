"""Peers that hold a real node's call listener (docs/DESIGN.md §4.1 "Limits").

Peers with the cluster's client certificate take every connection slot of
node n1's call listener by sending one request and then nothing; before,
each held its slot for ever and a new caller was refused (it fell back to
gRPC). Now a new caller takes the slot of the idlest one. Slowloris peers
that send a request's first bytes and then trickle the rest, or stop inside
it, held their slot and buffer for ever; now each is closed once its frame
is neither whole within ``frame_s`` (10 s) nor coming at 16 KiB/s. A peer
that calls and never reads its replies loses its connection after
``write_stall_s`` (30 s). Each end is one line in the node's log, and a
caller in the background sees no call fail. n1 runs with these limits
shortened (``--call-limit``): the tests see them act without waiting them out.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import ssl
import threading
import time

import pytest

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.rpc import security
from hermesx.rpc.frames import Frame, FrameReader, Reply, encode_request
from hermesx.rpc.node_client import call_address
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.testing.callers import BackgroundCaller
from hermesx.testing.clusters import part_log, wait_for_log
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# n1's listener limits (CallLimits), set smaller than their defaults (256, 10 s, 30 s).
SLOTS = 64  # max_connections
FRAME_S = 3  # frame_s: a frame begun must be whole by then (or come at 16 KiB/s)
WRITE_STALL_S = 8  # write_stall_s: a peer reading none of its replies for this long
EVICT_IDLE_S = 1.0  # evict_idle_s (its default): a holder idle this long may lose its slot


@pytest.fixture(scope="module")
def cluster(cluster_factory: ClusterFactory) -> LocalCluster:
    """Two nodes: n1's listener is attacked (the plugin's ``client`` calls this cluster)."""
    limits = [f"max_connections={SLOTS}", f"frame_s={FRAME_S}", f"write_stall_s={WRITE_STALL_S}"]
    n1 = NodeSpec("n1", options=tuple(a for limit in limits for a in ("--call-limit", limit)))
    return cluster_factory([n1, "n2"])


def _context(cluster: LocalCluster) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    certs = security.load_certs(cluster.tls_dir)
    context.load_verify_locations(certs.ca_cert)
    context.load_cert_chain(certs.cert("client"), certs.key("client"))
    return context


def _open(context: ssl.SSLContext, address: str) -> ssl.SSLSocket | None:
    host, _, port = address.rpartition(":")
    raw = socket.create_connection((host, int(port)), timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname=security.TARGET_NAME)
    except OSError:  # refused at accept: every slot taken
        raw.close()
        return None


def _closed_by_peer(sock: ssl.SSLSocket) -> bool:
    sock.settimeout(0)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except OSError:
        return True


def _served(sock: ssl.SSLSocket, guid: str, id: int) -> bool:
    """Whether a ``get`` of ``guid`` sent on ``sock`` is answered with a result."""
    body = pb.InvokeRequest(guid=guid, method="get", timeout=10.0).SerializeToString()
    sock.sendall(encode_request(id, "invoke", 10.0, body))
    reader, frames = FrameReader(), list[Frame]()
    while not frames:
        data = sock.recv(65536)
        if not data:
            return False
        frames = reader.feed(data)
    reply = frames[0]
    return (
        isinstance(reply, Reply)
        and reply.id == id
        and pb.InvokeReply.FromString(reply.body).WhichOneof("outcome") == "result"
    )


def test_peers_holding_every_slot_neither_refuse_a_caller_nor_keep_a_frame_open(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """Every slot is held by a peer that sent one request and then nothing (held for
    ever before); a new caller is served on the channel, the idlest holder making room.
    Then slowloris peers send a request's first bytes and trickle the rest, or stop:
    each gets in the same way, and is closed once its frame is neither whole within
    FRAME_S nor coming at 16 KiB/s."""
    guid = client.create(atoms["counter"], name=unique_name, on="n1")
    address = call_address(client.nodes()["n1"])
    assert address is not None
    context = _context(cluster)
    holders: list[ssl.SSLSocket] = []
    tricklers: list[ssl.SSLSocket] = []
    request = encode_request(1, "invoke", 10.0, b"\x0a" + bytes([60]) + b"x" * 60)
    stop = threading.Event()

    def trickle() -> None:
        """Every other trickler sends one more byte of its frame each second."""
        sent = 8
        while not stop.wait(1.0) and sent < len(request) - 1:
            for sock in tricklers[::2]:
                with contextlib.suppress(OSError):
                    sock.sendall(request[sent : sent + 1])
            sent += 1

    trickler = threading.Thread(target=trickle, daemon=True)
    with BackgroundCaller(client, unique_name) as background:
        try:
            for i in range(SLOTS):
                sock = _open(context, address)
                if sock is None:
                    break
                holders.append(sock)
                assert _served(sock, guid, i + 1)  # one request, then nothing
            assert len(holders) >= SLOTS - 8, len(holders)  # the caller's own connections
            # Idle, for eviction, is no request for EVICT_IDLE_S: a deliberate wait until
            # every holder is (filling the slots may take less on a quick machine).
            time.sleep(EVICT_IDLE_S + 0.2)
            newcomer = _open(context, address)
            assert newcomer is not None, "refused: idle peers hold every slot"
            # It stays, as the holders do: each slowloris peer below must make room too.
            holders.append(newcomer)
            assert _served(newcomer, guid, 7), "the newcomer was not served"
            wait_for_log(cluster, "node-n1", "evicted: no request for")
            for _ in range(16):
                sock = _open(context, address)
                assert sock is not None, "a new connection was refused"
                sock.sendall(request[:8])  # a header and a few bytes: then slow
                tricklers.append(sock)
            trickler.start()
            wait_until(
                lambda: all(_closed_by_peer(sock) for sock in tricklers),
                90.0,
                "the node to close every slowloris connection",
            )
        finally:
            stop.set()
            if trickler.is_alive():
                trickler.join(10)
            for sock in holders + tricklers:
                sock.close()
        background.wait_more()
    assert background.failures == []
    log = part_log(cluster, "node-n1")
    closed = [line for line in log.splitlines() if "closed the call connection" in line]
    trickled = [
        line for line in closed if f"no whole frame within {FRAME_S} s of its first bytes" in line
    ]
    assert len(trickled) == len(tricklers), trickled
    assert all("slower than 16384 bytes/s" in line for line in trickled), trickled
    assert sum("evicted: no request for" in line for line in closed) >= 1 + len(tricklers)


def test_a_peer_that_calls_and_never_reads_costs_a_bounded_outbox_and_loses_its_connection(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """A peer sends requests whose replies are large (an echo of 256 KiB) and reads none:
    the replies fill the kernel's buffers, then the connection's outbox; the node stops
    reading that peer's requests and closes it after WRITE_STALL_S without a byte read (§4.1),
    while a caller in the background sees no call fail."""
    counter = f"{unique_name}c"
    client.create(atoms["counter"], name=counter, on="n1")
    echo = client.create(atoms["echo"], name=unique_name, on="n1", checkpoint="on-request")
    address = call_address(client.nodes()["n1"])
    assert address is not None
    payload = b"\xc6" + (2**18).to_bytes(4, "big") + b"e" * 2**18  # msgpack bin 32
    request = pb.InvokeRequest(
        guid=echo, method="echo", args=payload, timeout=60.0
    ).SerializeToString()
    sock = _open(_context(cluster), address)
    assert sock is not None
    sent = 0
    with BackgroundCaller(client, counter) as background, sock:
        sock.settimeout(1.0)
        # Until the node stops reading us (its outbox for us is full) or closes us.
        with contextlib.suppress(OSError):
            for i in range(1, 400):
                sock.sendall(encode_request(i, "invoke", 60.0, request))
                sent = i
        stalled = f"read none of our replies for {WRITE_STALL_S} s"
        log = wait_for_log(cluster, "node-n1", stalled, timeout=120.0)
        background.wait_more()
    assert background.failures == []
    assert sent < 399, "every request was read: the node buffered 100 MiB of replies"
    line = next(x for x in log.splitlines() if "read none of our replies" in x)
    assert "closed the call connection" in line
