"""The call listener's slots against peers that hold them (docs/DESIGN.md §4.1 "Limits").

A slowloris peer sends a frame's header and then trickles the rest, or stops
inside it; others open connections, send a request and then stay idle. Each
would hold one of the listener's connection slots for ever, and enough of
them would refuse every real caller. Here a frame begun must be whole within
``frame_s`` (also a TLS record cut short), and with every slot taken a new
connection takes the slot of the idlest one.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from hermesx.rpc import link as link_module
from hermesx.rpc import security
from hermesx.rpc.callclient import CallPool
from hermesx.rpc.callserver import Call, CallLimits, CallServer
from hermesx.rpc.frames import Error, Frame, FrameReader, Reply, encode_request
from hermesx.rpc.link import Link
from hermesx.rpc.wire import TLSIdentity
from hermesx.testing.tls import MemoryTLS
from hermesx.testing.wait import wait_until

LIMITS = CallLimits(max_connections=4, frame_s=1.0, evict_idle_s=0.3, first_frame_s=30.0)


@pytest.fixture
def server(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[CallServer, str]]:
    caplog.set_level("WARNING", logger="hermesx.rpc.callserver")
    served = CallServer("slots server", workers=4, tls=None, limits=LIMITS)
    served.register("echo", lambda call: call.body, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    yield served, address
    served.stop()


def _connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def _goodbye(sock: socket.socket) -> list[Frame]:
    """The frames the listener sends before it closes ``sock``."""
    reader, frames = FrameReader(), list[Frame]()
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            frames += reader.feed(data)
    return frames


def test_a_frame_trickled_or_left_half_sent_ends_its_connection(
    server: tuple[CallServer, str], caplog: pytest.LogCaptureFixture
) -> None:
    served, address = server
    request = encode_request(1, "echo", 10.0, b"x" * 100)
    with _connect(address) as stopped, _connect(address) as trickling:
        # A whole request first: the first-frame timer is not what ends them.
        for sock in (stopped, trickling):
            sock.sendall(request)
        stopped.sendall(request[:20])  # then it goes quiet inside a frame
        trickling.sendall(request[:6])
        sent = 6
        end = time.monotonic() + 20.0
        while not _closed_by_peer(trickling) and time.monotonic() < end:
            with contextlib.suppress(OSError):
                trickling.sendall(request[sent : sent + 1])  # a byte every 0.2 s
            sent += 1
            time.sleep(0.2)
        assert sent < len(request), "the whole frame went out: nothing was tested"
        assert time.monotonic() < end, "the trickling peer kept its connection"
        wait_until(lambda: _closed_by_peer(stopped), 20.0, "the quiet peer's connection to end")
    wait_until(lambda: served.connections == 0, 10.0, "the slots to be free")
    reasons = [r.getMessage() for r in caplog.records if "closed the call connection" in r.message]
    assert len([r for r in reasons if "no whole frame within 1 s of its first bytes" in r]) == 2
    assert any("(20 bytes of it received)" in r for r in reasons), reasons


def test_a_frame_held_back_by_the_listener_is_not_the_peers_fault(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the listener reads no more of a connection (its requests in flight at the
    limit), the frames waiting are not a peer trickling: the connection stays."""
    limits = CallLimits(max_in_flight=1, frame_s=0.5)
    served = CallServer("slots server", workers=2, tls=None, limits=limits)

    def slow(call: object) -> bytes:
        time.sleep(2.0)
        return b"done"

    served.register("slow", slow, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    try:
        pool = CallPool()
        connection = pool.connection(address)
        with ThreadPoolExecutor(3) as calls:
            replies = [calls.submit(connection.call, "slow", b"", 30.0) for _ in range(3)]
            assert [r.result(timeout=60) for r in replies] == [b"done"] * 3
        assert connection.closed is None
        pool.close()
    finally:
        served.stop()


def test_with_every_slot_taken_the_idlest_connection_makes_room(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING", logger="hermesx.rpc.callserver")
    # Frames may take long here: the holders inside one must be evicted, not timed out.
    limits = CallLimits(max_connections=4, evict_idle_s=0.3, frame_s=600.0, first_frame_s=600.0)
    served = CallServer("slots server", workers=4, tls=None, limits=limits)
    served.register("echo", lambda call: call.body, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    pool = CallPool()
    caller = pool.connection(address)
    assert caller.call("echo", b"warm", 10.0) == b"warm"
    holders = []
    try:
        # The other slots: one peer idle after a request, two inside a frame.
        idle = _connect(address)
        idle.sendall(encode_request(1, "echo", 10.0, b"hi"))
        holders.append(idle)
        for _ in range(2):
            sock = _connect(address)
            sock.sendall(struct.pack("!I", 1000) + b"\x95")
            holders.append(sock)
        wait_until(lambda: served.connections == 4, 10.0, "every slot taken")
        time.sleep(limits.evict_idle_s + 0.2)
        assert caller.call("echo", b"busy", 10.0) == b"busy"  # the real caller is not idle
        # A newcomer is served: the idlest holder (no request since it connected) goes.
        with _connect(address) as newcomer:
            newcomer.sendall(encode_request(7, "echo", 10.0, b"room"))
            reader, frames = FrameReader(), list[Frame]()
            while not frames:
                data = newcomer.recv(65536)
                assert data, "the newcomer was refused"
                frames = reader.feed(data)
            assert frames[0] == Reply(7, b"room"), frames
        assert served.connections <= 4
        assert caller.call("echo", b"still", 10.0) == b"still"
        assert caller.closed is None

        # The evicted connection's own thread logs why as it ends: maybe after the newcomer's reply.
        def evicted_lines() -> list[str]:
            lines = [r.getMessage() for r in caplog.records]
            return [line for line in lines if "evicted: no request for" in line]

        wait_until(lambda: evicted_lines(), 10.0, "the eviction to be logged")
        evicted = evicted_lines()
        assert len(evicted) == 1, evicted
        assert "4 open, the limit" in evicted[0]
    finally:
        for sock in holders:
            sock.close()
        pool.close()
        served.stop()


def test_with_every_slot_busy_a_newcomer_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """Connections that called within ``evict_idle_s`` keep their slots."""
    caplog.set_level("WARNING", logger="hermesx.rpc.callserver")
    limits = CallLimits(max_connections=4, evict_idle_s=120.0)
    served = CallServer("slots server", workers=4, tls=None, limits=limits)
    served.register("echo", lambda call: call.body, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    callers = [CallPool() for _ in range(4)]
    try:
        for each in callers:
            assert each.connection(address).call("echo", b"x", 10.0) == b"x"
        with _connect(address) as newcomer:
            assert _goodbye(newcomer) == []
        assert any("connections open, the limit" in r.message for r in caplog.records)
        for each in callers:
            assert each.connection(address).call("echo", b"y", 10.0) == b"y"
    finally:
        for each in callers:
            each.close()
        served.stop()


def test_a_tls_record_cut_short_gives_up_its_slot(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer past the handshake that sends part of a TLS record and stops: its bytes
    wait inside OpenSSL, not in a frame; it must not keep a slot a caller needs."""
    caplog.set_level("WARNING", logger="hermesx.rpc.callserver")
    security.init_certs(tmp_path, "slots", {"n1": "node", "client": "client"})
    limits = CallLimits(max_connections=1, frame_s=1.0, evict_idle_s=0.3, first_frame_s=30.0)
    served = CallServer(
        "slots server", workers=2, tls=TLSIdentity(tmp_path, "n1", "slots"), limits=limits
    )
    served.register("echo", lambda call: call.body, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    context = security.ssl_client_context(tmp_path, "client")
    pool = CallPool(TLSIdentity(tmp_path, "client", "slots"))
    try:
        with _connect(address) as sock:
            client = MemoryTLS(context, sock, security.TARGET_NAME)
            client.handshake()
            if pending := client.pending():
                sock.sendall(pending)
            record = client.write(encode_request(1, "echo", 10.0, b"x" * 1000))
            sock.sendall(record[: len(record) // 2])
            wait_until(lambda: served.connections == 1, 10.0, "the slot taken")
            time.sleep(limits.evict_idle_s + 0.2)
            assert pool.connection(address).call("echo", b"mine", 10.0) == b"mine"
            wait_until(lambda: _closed_by_peer(sock), 20.0, "the holder's connection to end")
        evicted = [r.getMessage() for r in caplog.records if "evicted: no request" in r.message]
        assert len(evicted) == 1, evicted
    finally:
        pool.close()
        served.stop()


def test_the_goodbye_names_the_reason() -> None:
    """What a trickling peer receives says why its connection ends."""
    served = CallServer("slots server", workers=1, tls=None, limits=LIMITS)
    served.register("echo", lambda call: call.body, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    try:
        with _connect(address) as sock:
            sock.sendall(encode_request(1, "echo", 10.0, b"abc")[:8])
            frames = _goodbye(sock)
        assert len(frames) == 1 and isinstance(frames[0], Error), frames
        assert frames[0].id == 0 and "not finished in time" in frames[0].message
    finally:
        served.stop()


def test_the_request_bodies_held_at_once_are_bounded_across_connections() -> None:
    """Each connection may have 64 requests running or waiting; with frames of up to
    8 MiB on 256 connections that is 128 GiB. Past ``max_held_bytes`` of bodies held,
    the listener reads no connection until some finish; every request is still served."""
    release = threading.Event()
    limits = CallLimits(max_held_bytes=4 * 2**20)
    served = CallServer("slots server", workers=1, tls=None, limits=limits)

    def hold(call: Call) -> bytes:
        release.wait(60)
        return b"ok"

    served.register("hold", hold, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    body = b"x" * 2**20
    answered: list[int] = []

    def peer() -> None:
        with _connect(address) as sock:
            frames = b"".join(encode_request(i, "hold", 60.0, body) for i in range(1, 21))
            sender = threading.Thread(target=sock.sendall, args=(frames,))
            sender.start()
            reader, replies = FrameReader(), list[Frame]()
            while len(replies) < 20:
                data = sock.recv(65536)
                if not data:
                    break
                replies += reader.feed(data)
            sender.join(30)
            answered.append(sum(isinstance(r, Reply) for r in replies))

    peers = [threading.Thread(target=peer) for _ in range(3)]
    try:
        for each in peers:
            each.start()
        wait_until(lambda: served.held_bytes >= 4 * 2**20, 30.0, "the budget to fill")
        time.sleep(0.5)  # the peers keep writing: the listener must not read on
        assert served.held_bytes <= (4 + 3) * 2**20, served.held_bytes  # a frame each past it
        release.set()
        for each in peers:
            each.join(60)
        assert answered == [20, 20, 20]
        wait_until(lambda: served.held_bytes == 0, 10.0, "the bodies to be let go")
    finally:
        release.set()
        served.stop()


def test_waking_a_link_after_it_ended_writes_into_no_other_file() -> None:
    """A reply finishing after its connection ended wakes the link: its wake-up pipe is
    closed by then and the number may belong to another connection, whose stream a
    stray byte would corrupt."""
    mine, theirs = socket.socketpair()
    link = Link(mine, max_frame=1024)
    running = threading.Thread(target=link.run, args=(lambda frames: None,))
    running.start()
    link.close("done")
    running.join(10)
    theirs.close()
    others = [socket.socketpair() for _ in range(4)]  # they take the freed numbers
    try:
        link.wake()
        for pair in others:
            for end in pair:
                end.setblocking(False)
                with pytest.raises(BlockingIOError):
                    end.recv(16)
    finally:
        for pair in others:
            for end in pair:
                end.close()


def test_a_large_frame_over_a_slow_network_gets_through() -> None:
    """A frame that takes longer than ``frame_s`` but comes faster than ``frame_rate``
    (a checkpoint over a slow link) is served, also as a connection's first frame."""
    limits = CallLimits(first_frame_s=1.0, frame_s=1.0, frame_rate=16 * 1024)
    served = CallServer("slots server", workers=1, tls=None, limits=limits)
    served.register("echo", lambda call: call.body[:2], "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    try:
        with _connect(address) as sock:
            for id in (1, 2):
                frame = encode_request(id, "echo", 30.0, b"ab" + bytes(150 * 1024))
                for start in range(0, len(frame), 24 * 1024):  # ~48 KiB/s: 3 s a frame
                    sock.sendall(frame[start : start + 24 * 1024])
                    time.sleep(0.5)
                reader, frames = FrameReader(), list[Frame]()
                while not frames:
                    data = sock.recv(65536)
                    assert data, "the slow frame's connection was closed"
                    frames = reader.feed(data)
                assert frames == [Reply(id, b"ab")], frames
    finally:
        served.stop()


def test_a_members_idle_connection_goes_after_every_clients(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Clients opening connections cannot evict a node's (its forwards, its checkpoints)
    while a client's idle connection is there to take instead, even a younger one."""
    caplog.set_level("WARNING", logger="hermesx.rpc.callserver")
    security.init_certs(tmp_path, "slots", {"s1": "storesite", "n1": "node", "client": "client"})
    limits = CallLimits(max_connections=2, evict_idle_s=0.2)
    served = CallServer(
        "slots server", workers=2, tls=TLSIdentity(tmp_path, "s1", "slots"), limits=limits
    )
    served.register("echo", lambda call: call.body, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    node = CallPool(TLSIdentity(tmp_path, "n1", "slots"))
    clients = [CallPool(TLSIdentity(tmp_path, "client", "slots")) for _ in range(2)]
    try:
        member = node.connection(address)
        assert member.call("echo", b"n", 10.0) == b"n"
        time.sleep(0.3)  # the member's connection is the older idle one
        younger = clients[0].connection(address)
        assert younger.call("echo", b"c", 10.0) == b"c"
        time.sleep(0.3)
        assert clients[1].connection(address).call("echo", b"new", 10.0) == b"new"
        wait_until(lambda: younger.closed is not None, 10.0, "the client's connection to go")
        assert member.closed is None
        assert member.call("echo", b"still", 10.0) == b"still"
    finally:
        node.close()
        for each in clients:
            each.close()
        served.stop()


def test_a_frame_begun_after_a_whole_one_starts_its_clock_with_its_first_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The link's thread reads a lone request in its quick loop, which has no frame clock;
    # a frame begun in the same read must start the clock then, not at the whole loop's
    # next look (up to POLL_MS later: a frame trickled or left half-sent kept its
    # connection that much past frame_s).
    monkeypatch.setattr(link_module, "POLL_MS", 5000)
    ours, theirs = socket.socketpair()
    link = Link(ours, max_frame=1 << 20)
    got: list[Frame] = []
    runner = threading.Thread(
        target=link.run, args=(got.extend,), kwargs={"frame_s": 10.0}, daemon=True
    )
    runner.start()
    request = encode_request(1, "echo", 5.0, b"x" * 100)
    try:
        theirs.sendall(request)
        wait_until(lambda: len(got) == 1, 10.0, "the whole request")
        theirs.sendall(request + request[:20])  # a whole one, and one begun
        wait_until(lambda: link._frames.pending, 10.0, "the frame begun")
        wait_until(lambda: link._clock.began is not None, 3.0, "the frame clock to start")
    finally:
        link.close("test over")
        runner.join(10.0)
        theirs.close()
