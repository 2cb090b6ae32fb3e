"""The call channel's frames and one connection in-process (docs/DESIGN.md §4.1).

Frames round-trip and a bad one names what is wrong; over a real loopback
connection, many calls share one connection and each gets its own reply
although the replies come back out of order, errors keep their kind, a call
past its deadline ends as a timeout, and a peer that never reads its replies
is held back and then dropped, without the server holding more than its
limits; over TLS each kind admits its RPC's roles, and a request that rides
on the handshake's last bytes is answered.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import msgpack
import pytest

from hermesx.core.errors import (
    CallTimeoutError,
    ConfigurationError,
    MethodError,
    NotAuthorizedError,
    UnreachableError,
)
from hermesx.node.config import NodeConfig
from hermesx.rpc import security
from hermesx.rpc.callclient import CallPool
from hermesx.rpc.callserver import Call, CallLimits, CallServer
from hermesx.rpc.frames import (
    Error,
    FrameError,
    FrameReader,
    Reply,
    Request,
    encode_error,
    encode_reply,
    encode_request,
)
from hermesx.rpc.wire import TLSIdentity
from hermesx.testing.wait import wait_until


def test_frames_round_trip_whole_or_in_pieces() -> None:
    data = (
        encode_request(1, "invoke", 2.5, b"body", {"traceparent": "00-ab"})
        + encode_reply(1, b"answer")
        + encode_error(2, "method", "no such method")
    )
    reader = FrameReader()
    frames = []
    for i in range(len(data)):  # a byte at a time: every split point
        frames += reader.feed(data[i : i + 1])
    assert frames == [
        Request(1, "invoke", 2.5, b"body", {"traceparent": "00-ab"}),
        Reply(1, b"answer"),
        Error(2, "method", "no such method"),
    ]
    assert reader.pending == 0


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (struct.pack("!I", 2**32 - 1), "announcing 4294967295 bytes"),
        (struct.pack("!I", 0), "an empty frame"),
        (struct.pack("!I", 3) + b"\xc1\xc1\xc1", "not msgpack"),
        (struct.pack("!I", 1) + b"\x01", "not [type, id, ...]"),
    ],
)
def test_a_bad_frame_names_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(FrameError, match=says.replace("[", r"\[").replace("]", r"\]")):
        FrameReader(max_frame=1024).feed(data)


def test_a_request_with_a_bad_field_is_refused() -> None:
    packed = msgpack.packb([0, 1, "invoke", -1.0, b""], use_bin_type=True)
    with pytest.raises(FrameError, match="timeout"):
        FrameReader().feed(struct.pack("!I", len(packed)) + packed)


@pytest.fixture
def server() -> Iterator[tuple[CallServer, str]]:
    served = CallServer("test server", workers=8, tls=None)

    def echo(call: Call) -> bytes:
        delay, _, text = call.body.partition(b":")
        time.sleep(float(delay))
        if text == b"fail":
            raise MethodError("the atom has no method fail")
        return text

    served.register("echo", echo, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    yield served, address
    served.stop()


def test_calls_share_one_connection_and_replies_come_out_of_order(
    server: tuple[CallServer, str],
) -> None:
    _, address = server
    pool = CallPool()
    connection = pool.connection(address)
    order: list[bytes] = []
    lock = threading.Lock()

    def call(i: int) -> bytes:
        reply = connection.call("echo", f"{0.3 - i * 0.05:.2f}:{i}".encode(), 5.0)
        with lock:
            order.append(reply)
        return reply

    with ThreadPoolExecutor(6) as threads:
        replies = list(threads.map(call, range(6)))
    assert replies == [str(i).encode() for i in range(6)]
    assert order != sorted(order)  # the slow first call answered last
    assert pool.connection(address) is connection
    pool.close()


def test_errors_keep_their_kind_and_deadlines_hold(server: tuple[CallServer, str]) -> None:
    _, address = server
    pool = CallPool()
    connection = pool.connection(address)
    with pytest.raises(MethodError, match="no method fail"):
        connection.call("echo", b"0:fail", 5.0)
    with pytest.raises(CallTimeoutError):
        connection.call("echo", b"1.0:late", 0.2)
    assert connection.call("echo", b"0:still here", 5.0) == b"still here"
    pool.close()


def test_a_closed_listener_is_unreachable(server: tuple[CallServer, str]) -> None:
    served, address = server
    served.stop()
    with pytest.raises(UnreachableError):
        CallPool().connection(address).call("echo", b"0:x", 2.0)


def test_a_peer_that_never_reads_is_held_back_then_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = CallLimits(max_in_flight=4, write_stall_s=1.0)
    served = CallServer("test server", workers=8, tls=None, limits=limits)
    ran = []
    served.register("big", lambda call: ran.append(1) or b"x" * 2**20, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port))) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(0.2)
            sent = 0
            with contextlib.suppress(OSError):  # our send buffer fills: the server stopped reading
                for i in range(1, 100_000):
                    sock.sendall(encode_request(i, "big", 30.0, b""))
                    sent += 1
            with caplog.at_level(logging.WARNING, logger="hermesx.rpc.callserver"):
                wait_until(
                    lambda: "read none of our replies" in caplog.text, 30.0, "the stall to end it"
                )
        # Each request answers 1 MiB. The server ran only what the kernels' socket
        # buffers took (some MiB on loopback), its backlog and its requests in
        # flight held, not the thousands of requests sent.
        assert len(ran) < 40 < 1000 < sent, (len(ran), sent)
    finally:
        served.stop()


@pytest.mark.parametrize(
    ("listen", "call_listen", "where"),
    [
        ("10.0.0.5:7000", "auto", "10.0.0.5:7001"),
        ("127.0.0.1:0", "auto", "127.0.0.1:0"),
        ("127.0.0.1:7000", "127.0.0.1:9000", "127.0.0.1:9000"),
        ("127.0.0.1:7000", "off", None),
    ],
)
def test_a_node_listens_for_calls_next_to_grpc(
    listen: str, call_listen: str, where: str | None
) -> None:
    config = NodeConfig(name="n1", listen=listen, call_listen=call_listen)
    config.validate()
    assert config.call_address() == where


def test_a_bad_call_address_is_refused_before_start() -> None:
    with pytest.raises(ConfigurationError, match="call_listen 'nowhere'"):
        NodeConfig(name="n1", call_listen="nowhere").validate()


def test_over_tls_roles_are_checked_per_kind(tmp_path: pathlib.Path) -> None:
    security.init_certs(tmp_path, "blue", {"n1": "node", "c1": "client"})
    served = CallServer("node n1", workers=4, tls=TLSIdentity(tmp_path, "n1", "blue"))
    served.register("echo", lambda call: call.body, "Supervisor/Invoke")
    served.register("stage", lambda call: b"staged", "Supervisor/StageCopy")
    address = served.start("127.0.0.1:0")
    try:
        for _ in range(20):  # fresh connections: a request may ride on the handshake's bytes
            pool = CallPool(TLSIdentity(tmp_path, "c1", "blue"))
            assert pool.connection(address).call("echo", b"hello", 5.0) == b"hello"
            pool.close()
        pool = CallPool(TLSIdentity(tmp_path, "c1", "blue"))
        with pytest.raises(NotAuthorizedError, match="role client may not call it"):
            pool.connection(address).call("stage", b"", 5.0)
        assert pool.connection(address).call("echo", b"still", 5.0) == b"still"
        pool.close()
    finally:
        served.stop()
