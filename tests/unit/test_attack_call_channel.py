"""Attacks on the call channel in-process: what one caller or peer can do to the others.

docs/DESIGN.md §4.1 promises that many calls share one connection and that a
bad frame ends only the connection it came on. These tests look for a
caller's own mistake (a deadline already past, or one far in the future)
that makes the shared connection carry a frame its listener refuses, which
would cut short every other call in flight on it; for a peer that pipelines
more requests in one write than a connection may have running or waiting;
and for frames whose msgpack is shaped to cost the listener (deep nesting,
huge declared lengths, a meta map with non-text keys).
"""

from __future__ import annotations

import pathlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import msgpack
import pytest

from hermesx.core.errors import CallTimeoutError, PayloadTooLargeError
from hermesx.rpc import security
from hermesx.rpc.callclient import CallConnection, CallPool
from hermesx.rpc.callserver import Call, CallLimits, CallServer
from hermesx.rpc.frames import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameError,
    FrameReader,
    Reply,
    encode_request,
)
from hermesx.rpc.wire import TLSIdentity
from hermesx.testing.tls import MemoryTLS
from hermesx.testing.wait import wait_until


@pytest.fixture
def server() -> Iterator[tuple[CallServer, str]]:
    served = CallServer("attack server", workers=4, tls=None)

    def echo(call: Call) -> bytes:
        delay, _, text = call.body.partition(b":")
        time.sleep(float(delay))
        return text

    served.register("echo", echo, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    yield served, address
    served.stop()


def _another_call_in_flight(
    connection: CallConnection, outcome: dict[str, object]
) -> threading.Thread:
    """A call of another thread on ``connection``, answered in 1 s: its outcome lands in
    ``outcome`` (``reply`` or ``error``)."""

    def other_caller() -> None:
        try:
            outcome["reply"] = connection.call("echo", b"1.0:other", 10.0)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=other_caller)
    thread.start()
    return thread


@pytest.mark.parametrize("timeout", [-0.5, 0.0, 2e7, float("inf")])
def test_a_callers_bad_deadline_does_not_cut_the_others_calls_short(
    server: tuple[CallServer, str], timeout: float
) -> None:
    """A deadline already past (a retry near its end: the time to open a connection is
    taken from it) or one far off must cost only that call, never the connection."""
    _, address = server
    pool = CallPool()
    connection = pool.connection(address)
    slow: dict[str, object] = {}
    thread = _another_call_in_flight(connection, slow)
    time.sleep(0.2)  # the other call is in flight on the shared connection
    try:
        reply = connection.call("echo", b"0:mine", timeout)
    except CallTimeoutError:
        assert timeout <= 0  # past its deadline: a timeout, as on gRPC
    else:
        assert timeout > 0 and reply == b"mine"
    thread.join(15)
    assert slow == {"reply": b"other"}, slow
    assert connection.closed is None
    pool.close()


def test_a_request_over_the_frame_limit_fails_alone_as_payload_too_large(
    server: tuple[CallServer, str],
) -> None:
    """Arguments past the listener's frame limit: gRPC answers payload_too_large for
    that call; the channel must too, without ending the connection others share."""
    _, address = server
    pool = CallPool()
    connection = pool.connection(address)
    slow: dict[str, object] = {}
    thread = _another_call_in_flight(connection, slow)
    time.sleep(0.2)
    with pytest.raises(PayloadTooLargeError):
        connection.call("echo", b"0:" + b"x" * DEFAULT_MAX_FRAME_BYTES, 10.0)
    thread.join(15)
    assert slow == {"reply": b"other"}, slow
    assert connection.closed is None
    pool.close()


def test_one_write_of_many_requests_does_not_pass_the_in_flight_limit() -> None:
    """At most ``max_in_flight`` requests of a connection run or wait at once
    (docs/DESIGN.md §4.1), also when the peer pipelines hundreds in one write."""
    limits = CallLimits(max_in_flight=4)
    served = CallServer("attack server", workers=2, tls=None, limits=limits)
    release = threading.Event()
    entered: list[int] = []

    def blocked(call: Call) -> bytes:
        entered.append(1)
        release.wait(30)
        return b"ok"

    served.register("blocked", blocked, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"".join(encode_request(i, "blocked", 60.0, b"") for i in range(1, 301)))
            wait_until(lambda: len(entered) >= 2, 30.0, "the workers to take requests")
            time.sleep(0.5)  # let the server read all it will read
            (connection,) = served._connections  # the one connection
            held = connection.in_flight
            release.set()
            # Every request is answered in the end (TCP held the rest back).
            reader, answered = FrameReader(), 0
            sock.settimeout(30)
            while answered < 300:
                answered += sum(isinstance(f, Reply) for f in reader.feed(sock.recv(65536)))
        assert held <= limits.max_in_flight, f"{held} requests running or waiting at once"
    finally:
        release.set()
        served.stop()


def _frame_of(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"\x91" * 100_000 + b"\xc0", "not msgpack"),  # nested 100,000 deep
        (b"\xdd\xff\xff\xff\xff", "not msgpack"),  # an array announcing 4 G items
        (b"\xdf\xff\xff\xff\xff", "not msgpack"),  # a map announcing 4 G pairs
        (b"\xc6\xff\xff\xff\xff", "not msgpack"),  # bytes announcing 4 GiB
        (b"\x95\x00\x01\xa2\xff\xfe\xcb" + struct.pack("!d", 1.0) + b"\xc4\x00", "not msgpack"),
        (msgpack.packb([0, 1, "invoke", 1.0, b"", {b"k": "v"}]), "meta"),  # a key not text
        (msgpack.packb([0, 1, "invoke", 1.0, b"", {str(i): "" for i in range(10**5)}]), "meta"),
        (msgpack.packb([0, 1, "invoke", float("nan"), b""]), "timeout"),
        (msgpack.packb([0, 0, "invoke", 1.0, b""]), "id 0"),
    ],
)
def test_a_costly_or_malformed_frame_is_refused_by_name(payload: bytes, says: str) -> None:
    with pytest.raises(FrameError, match=says):
        FrameReader().feed(_frame_of(payload))


def test_a_request_sent_with_the_tls_handshakes_last_flight_is_served(
    tmp_path: pathlib.Path,
) -> None:
    """A client's first request often arrives in the same segment as its TLS Finished
    (a loaded listener reads both in one recv during the handshake). The request must
    be served, not left in the TLS buffer until the first-frame timer ends the
    connection ("no request in time")."""
    security.init_certs(tmp_path, "attack", {"n1": "node", "client": "client"})
    limits = CallLimits(first_frame_s=2.0)
    served = CallServer(
        "attack server",
        workers=2,
        tls=TLSIdentity(tmp_path, "n1", "attack"),
        limits=limits,
    )
    served.register("echo", lambda call: call.body, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    host, _, port = address.rpartition(":")
    context = security.ssl_client_context(tmp_path, "client")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            client = MemoryTLS(context, sock, security.TARGET_NAME)
            client.handshake()
            # The handshake's last flight and the first request leave in one write.
            sock.sendall(client.write(encode_request(1, "echo", 10.0, b"hello")))
            reader, frames = FrameReader(), []
            while not frames:
                frames = reader.feed(client.read())
        assert frames == [Reply(1, b"hello")], frames
    finally:
        served.stop()


def test_a_listener_holding_the_caller_back_within_its_limits_fails_no_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener with its requests in flight at the limit stops reading (docs/DESIGN.md
    §4.1: TCP holds the sender back). The caller must then wait, within each call's
    deadline, not take the held-back writes for a dead peer and end every call on
    the connection. Here each call takes 1.5 s, longer than the caller's stall limit
    (30 s, shortened here to 1 s, as 64 calls in flight each waiting over 30 s would
    be); the calls' deadlines (60 s) are far longer than both."""
    monkeypatch.setattr("hermesx.rpc.callclient.WRITE_STALL_S", 1.0)
    served = CallServer("attack server", workers=1, tls=None, limits=CallLimits(max_in_flight=1))
    served.register("slow", lambda call: time.sleep(1.5) or b"ok", "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    pool = CallPool()
    try:
        connection = pool.connection(address)
        big = b"x" * (6 * 2**20)
        with ThreadPoolExecutor(5) as threads:
            outcomes = list(
                threads.map(
                    lambda _: _outcome(lambda: connection.call("slow", big, 60.0)), range(5)
                )
            )
        assert outcomes == ["ok"] * 5, outcomes
    finally:
        pool.close()
        served.stop()


def _outcome(call: Callable[[], bytes]) -> str:
    try:
        return call().decode()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def test_a_call_timing_out_behind_a_listener_that_reads_nothing_ends_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other side of the test above: requests held unsent must not pile up for
    ever behind a listener that reads nothing — a call that times out while none of
    them was taken for the stall limit ends the connection."""
    monkeypatch.setattr("hermesx.rpc.callclient.WRITE_STALL_S", 0.5)
    release = threading.Event()
    served = CallServer("attack server", workers=1, tls=None, limits=CallLimits(max_in_flight=1))
    served.register("stuck", lambda call: release.wait(30) and b"ok", "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    pool = CallPool()
    try:
        connection = pool.connection(address)
        big = b"x" * (6 * 2**20)
        with ThreadPoolExecutor(4) as threads:
            outcomes = list(
                threads.map(
                    lambda _: _outcome(lambda: connection.call("stuck", big, 2.0)), range(4)
                )
            )
        # Each ends at its deadline, or with the connection the first one ended.
        timed_out = [o for o in outcomes if "did not answer in time" in o]
        cut = [o for o in outcomes if "read none of our requests" in o]
        assert timed_out and len(timed_out) + len(cut) == len(outcomes), outcomes
        wait_until(lambda: connection.closed is not None, 10.0, "the connection to end")
        assert "read none of our requests" in str(connection.closed)
    finally:
        release.set()
        pool.close()
        served.stop()
