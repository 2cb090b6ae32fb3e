"""Replies to pipelined requests go out together (docs/DESIGN.md §4.1).

While the listener's thread has another whole request behind the one it
runs, that run's reply waits and goes out with the next one: one ``send``
(and one TLS record) for a batch. What a caller would notice if that went
wrong: a pipelined request left unanswered, a reply answering the wrong id,
or a quick call's reply held back behind a slow call that came after it. And
frames that several threads write at once go out together, none lost.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from hermesx.rpc import callserver
from hermesx.rpc.callclient import CallPool
from hermesx.rpc.callserver import Call, CallServer, yield_reader
from hermesx.rpc.frames import FrameReader, Reply, encode_request
from hermesx.rpc.link import Link


@pytest.fixture
def address() -> Iterator[str]:
    served = CallServer("held replies server", workers=4, tls=None, hold_replies=True)

    def echo(call: Call) -> bytes:
        how, _, text = call.body.partition(b":")
        if how.startswith(b"yield"):
            yield_reader()
            how = how[len(b"yield") :]
        time.sleep(float(how))
        return text

    served.register("echo", echo, "Supervisor/Invoke", inline=True)
    yield served.start("127.0.0.1:0")
    served.stop()


def _pipelined(address: str, bodies: list[bytes]) -> socket.socket:
    """A raw connection that has sent a request per body, all in one write."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=10.0)
    sock.sendall(b"".join(encode_request(i, "echo", 10.0, b) for i, b in enumerate(bodies, 1)))
    return sock


def _replies(sock: socket.socket, reader: FrameReader) -> list[Reply]:
    """The replies the next receive brings (at least one)."""
    while True:
        data = sock.recv(65536)
        assert data, "the listener closed the connection"
        frames = reader.feed(data)
        if frames:
            assert all(type(f) is Reply for f in frames), frames
            return frames  # type: ignore[return-value]


def test_pipelined_requests_are_all_answered_in_one_send(address: str) -> None:
    bodies = [f"0:reply {i}".encode() for i in range(1, 6)]
    sock = _pipelined(address, bodies)
    try:
        replies = _replies(sock, FrameReader())
    finally:
        sock.close()
    # Each request got its own reply under its own id, and the five came together.
    assert [(r.id, r.body) for r in replies] == [(i, b[2:]) for i, b in enumerate(bodies, 1)]


@pytest.mark.parametrize(
    "later",
    [
        pytest.param(b"yield0.3:later", id="that-says-it-waits"),
        # It runs long without saying so: the listener's watch has the connection read
        # by another thread, which sends the first reply on its own.
        pytest.param(b"0.3:later", id="that-runs-long"),
    ],
)
def test_a_reply_is_not_held_behind_a_later_request(address: str, later: bytes) -> None:
    sock = _pipelined(address, [b"0:quick", later])
    reader = FrameReader()
    try:
        first = _replies(sock, reader)
        assert [(r.id, r.body) for r in first] == [(1, b"quick")]
        assert [(r.id, r.body) for r in _replies(sock, reader)] == [(2, b"later")]
    finally:
        sock.close()


def test_frames_written_by_many_threads_at_once_all_arrive_whole_and_once() -> None:
    # Writers that find another writer sending leave their frames to it: none may be
    # lost, sent twice or cut into another.
    ours, theirs = socket.socketpair()
    link = Link(ours, max_frame=1 << 20)
    runner = threading.Thread(target=link.run, args=(lambda _frames: None,), daemon=True)
    runner.start()
    threads, each = 8, 400

    def writer(t: int) -> None:
        for i in range(each):
            link.write(encode_request(t * each + i + 1, "echo", 5.0, b"x" * (i % 300)))

    writers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    got: list[int] = []
    reader = FrameReader()
    theirs.settimeout(10.0)
    try:
        for w in writers:
            w.start()
        while len(got) < threads * each:
            data = theirs.recv(65536)
            assert data, "the link closed"
            got += [frame.id for frame in reader.feed(data)]
        for w in writers:
            w.join(10.0)
    finally:
        link.close("test over")
        runner.join(10.0)
        theirs.close()
    assert sorted(got) == list(range(1, threads * each + 1))


class _Contended:
    """A lock whose next try without waiting fails once asked (another thread had it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fail_next_try = False

    def acquire(self, blocking: bool = True) -> bool:
        if not blocking and self.fail_next_try:
            self.fail_next_try = False
            return False
        return self._lock.acquire(blocking)

    def release(self) -> None:
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *_exc: object) -> None:
        self.release()


class _SlowSend:
    """A socket whose ``send`` first runs ``during`` (another thread writes meanwhile)."""

    def __init__(self, sock: socket.socket, during: Callable[[], None]) -> None:
        self._sock, self._during = sock, during

    def send(self, data: bytes) -> int:
        during, self._during = self._during, lambda: None
        during()
        return self._sock.send(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


def test_a_frame_left_to_a_writer_goes_even_when_the_lock_is_taken_after_it() -> None:
    # B writes while A sends: B leaves its frame to A. When A lets the lock go, another
    # thread (a reader, which sends nothing) may take it first: A must still send B's.
    ours, theirs = socket.socketpair()
    link = Link(ours, max_frame=1 << 20)
    lock = link._lock = _Contended()  # type: ignore[assignment]

    def b_writes() -> None:
        other = threading.Thread(target=link.write, args=(encode_request(2, "echo", 5.0, b"b"),))
        other.start()
        other.join(10.0)
        lock.fail_next_try = True  # A's next try finds the lock taken

    link.sock = _SlowSend(ours, b_writes)  # type: ignore[assignment]
    theirs.settimeout(10.0)
    reader, got = FrameReader(), []
    try:
        link.write(encode_request(1, "echo", 5.0, b"a"))
        while len(got) < 2:
            data = theirs.recv(65536)
            assert data, "the link closed"
            got += [frame.id for frame in reader.feed(data)]
    finally:
        link.release()
        theirs.close()
    assert sorted(got) == [1, 2]


def test_a_reply_is_not_held_behind_a_later_request_that_calls_another_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A forward calls the next node from the connection's own thread without saying it
    # waits: the replies held go before that call's wait, not after (nor at the watch's
    # look, put out of reach here so that only that can send them).
    monkeypatch.setattr(callserver, "SLOW_INLINE_S", 60.0)
    far = CallServer("far server", workers=2, tls=None)
    far.register("echo", lambda call: (time.sleep(0.3), call.body)[1], "Supervisor/Invoke")
    near = CallServer("near server", workers=2, tls=None, hold_replies=True)
    pool = CallPool()
    far_address = far.start("127.0.0.1:0")

    def forward(call: Call) -> bytes:
        if call.body == b"quick":
            return call.body
        return pool.connection(far_address).call("echo", call.body, 5.0)

    near.register("echo", forward, "Supervisor/Invoke", inline=True)
    sock = _pipelined(near.start("127.0.0.1:0"), [b"quick", b"forwarded"])
    reader = FrameReader()
    try:
        assert [(r.id, r.body) for r in _replies(sock, reader)] == [(1, b"quick")]
        assert [(r.id, r.body) for r in _replies(sock, reader)] == [(2, b"forwarded")]
    finally:
        sock.close()
        pool.close()
        near.stop()
        far.stop()
