"""Frames that several threads write at once on one call-channel link (docs/DESIGN.md §4.1).

A writer that finds another writer sending leaves its frame to it: one
``send`` (and one TLS record) for several threads' frames. What a caller
would notice if that went wrong: a frame lost, sent twice or cut into
another, or left behind when another thread takes the lock first.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from hermesx.rpc.frames import Error, Frame, FrameReader, encode_error, encode_request
from hermesx.rpc.link import Link
from hermesx.testing.wait import wait_until


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


class _Wrapped:
    """A lock whose ``acquire`` a test shapes; the rest is a plain lock's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True) -> bool:
        return self._lock.acquire(blocking)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


class _Contended(_Wrapped):
    """A lock whose next try without waiting fails once asked (another thread had it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next_try = False

    def acquire(self, blocking: bool = True) -> bool:
        if not blocking and self.fail_next_try:
            self.fail_next_try = False
            return False
        return self._lock.acquire(blocking)


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
    reader, got = FrameReader(), list[int]()
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


class _CloserFirst(_Wrapped):
    """A lock that, once ``armed``, makes ``holder``'s next waiting acquire wait until the
    link is closing (another thread took the lock first and began closing it)."""

    def __init__(self, link: Link, holder: threading.Thread) -> None:
        super().__init__()
        self._link, self._holder = link, holder
        self.armed = False

    def acquire(self, blocking: bool = True) -> bool:
        if blocking and self.armed and threading.current_thread() is self._holder:
            self.armed = False
            wait_until(lambda: self._link._closing is not None, 10.0, "close_after to begin")
        return self._lock.acquire(blocking)


def test_a_goodbye_written_while_another_writer_sends_reaches_the_peer() -> None:
    # The link's thread says goodbye (close_after: a bad frame, a frame too slow) while a
    # worker sends a reply: the goodbye is left to the worker, and close_after marks the
    # link closing before the worker comes back for it. The peer must still get it
    # (the one line that tells it why its connection ends), after the reply.
    ours, theirs = socket.socketpair()
    link = Link(ours, max_frame=1 << 20)
    lock = _CloserFirst(link, threading.current_thread())
    link._lock = lock  # type: ignore[assignment]
    goodbye = encode_error(0, "communication", "bad frame; closing")
    closer = threading.Thread(target=link.close_after, args=(goodbye, "bad frame"))

    def goodbye_meanwhile() -> None:
        closer.start()
        wait_until(lambda: len(link._queued) == 1, 10.0, "the goodbye to be left to us")
        lock.armed = True

    link.sock = _SlowSend(ours, goodbye_meanwhile)  # type: ignore[assignment]
    theirs.settimeout(10.0)
    try:
        link.write(encode_request(1, "echo", 5.0, b"a"))
        closer.join(10.0)
        assert not closer.is_alive()
    finally:
        link.release()
    reader, got = FrameReader(), list[Frame]()
    while data := theirs.recv(65536):
        got += reader.feed(data)
    theirs.close()
    assert [type(f).__name__ for f in got] == ["Request", "Error"]
    assert isinstance(got[1], Error) and got[1].message == "bad frame; closing"


def test_a_large_frame_waits_its_turn_instead_of_being_left_to_another_writer() -> None:
    # What is left to another writer waits outside the outbox, which the listener's bounds
    # on unsent bytes count: 1 MiB replies left so by many threads went past those bounds
    # (60 MiB unsent on a connection bounded at 2 MiB).
    ours, theirs = socket.socketpair()
    link = Link(ours, max_frame=1 << 22)
    runner = threading.Thread(target=link.run, args=(lambda _frames: None,), daemon=True)
    runner.start()
    big = encode_request(1, "echo", 5.0, b"x" * (1 << 20))
    link._lock.acquire()
    link._writing = True  # another writer is sending
    writer = threading.Thread(target=link.write, args=(big,))
    writer.start()
    writer.join(0.2)
    try:
        assert not link._queued, "a 1 MiB frame was left to the other writer"
    finally:
        link._writing = False
        link._lock.release()
    reader, got = FrameReader(), list[int]()
    theirs.settimeout(10.0)
    try:
        while not got:
            data = theirs.recv(1 << 20)
            assert data, "the link closed"
            got += [frame.id for frame in reader.feed(data)]
        writer.join(10.0)
    finally:
        link.close("test over")
        runner.join(10.0)
        theirs.close()
    assert got == [1]
