"""One connection of the call channel, either side (docs/DESIGN.md §4.1).

A :class:`Link` owns a connected socket and, on a secure cluster, the TLS
session on it, kept in memory buffers (:class:`ssl.SSLObject`) so that one
thread reads while others write without sharing an OpenSSL object unguarded.
Writers never block: :meth:`Link.write` sends what the kernel takes at once
and leaves the rest in the link's outbox, which the link's own thread
(:meth:`Link.run`) flushes. That thread also reads, cuts the bytes into
frames (:class:`~hermesx.rpc.frames.FrameReader`) and hands them on, one at
a time while its owner wants more (the frames of one read past that wait as
bytes). A peer
that stops reading for ``write_stall_s`` seconds loses the connection, so a
slow reader costs a bounded outbox, never a blocked worker.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hermesx.rpc.frames import Frame, FrameError, FrameReader, encode_error

__all__ = ["Link", "LinkClosed", "TLSSession", "handshake", "peer_waiting"]

READ_CHUNK = 256 * 1024
# A link's own buffers for what it receives and what TLS makes of it, reused by
# every read (a read makes no new object for its bytes); larger frames take
# several reads (and a link holds 64 KiB for them with TLS, 32 without).
RECEIVE_BYTES = 32 * 1024
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 10, 5, 3
# A frame a writer leaves to another writer sending (Link.write): at most one TLS
# record's worth, and while fewer than this many are left (else it waits its turn).
COMBINE_BYTES = 16 * 1024
COMBINE_FRAMES = 16
# How often the link's thread looks at its timers (first frame, stalled peer).
POLL_MS = 1000
_READ = select.POLLIN | select.POLLPRI
_ERR = select.POLLERR | select.POLLHUP | select.POLLNVAL


class Awaited(Protocol):
    """What a caller waits for (``finished`` once its reply or failure came)."""

    @property
    def finished(self) -> bool: ...


class LinkClosed(Exception):
    """The connection is closed; the message says why."""


@dataclass(frozen=True, slots=True)
class TLSSession:
    """A TLS session kept in memory: the socket's bytes pass through ``incoming``/``outgoing``.

    ``raw``: what reads and writes the session for each frame — the ``SSLObject``'s
    own OpenSSL object, whose ``read``/``write``/``pending`` the ``SSLObject`` only
    forwards to (three Python frames a call saved on each side), or the
    ``SSLObject`` itself where that is not there.
    """

    tls: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    raw: Any = None


def handshake(
    sock: socket.socket,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    timeout: float,
    server_hostname: str | None = None,
) -> TLSSession:
    """Run the TLS handshake on blocking ``sock`` within ``timeout``; the session made."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    session = context.wrap_bio(
        incoming, outgoing, server_side=server_side, server_hostname=server_hostname
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            session.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no TLS handshake within {timeout:g} s") from None
            sock.settimeout(left)
            try:
                data = sock.recv(READ_CHUNK)
            except TimeoutError:
                raise TimeoutError(f"no TLS handshake within {timeout:g} s") from None
            if not data:
                raise ConnectionError(
                    "the peer closed the connection during the TLS handshake"
                ) from None
            incoming.write(data)
        except ssl.SSLError:
            # Tell the peer why (an alert) before the caller closes the socket.
            with contextlib.suppress(OSError):
                sock.sendall(outgoing.read())
            raise
    pending = outgoing.read()
    if pending:
        sock.sendall(pending)
    return TLSSession(session, incoming, outgoing, getattr(session, "_sslobj", None) or session)


class _FrameClock:
    """A frame begun must be whole within ``frame_s`` of its first bytes, or come at
    ``frame_rate`` bytes/s at least (see :meth:`Link.run`); ``began``: when the
    unfinished frame received began to come (None: none)."""

    __slots__ = ("began", "frame_rate", "frame_s")

    def __init__(self, frame_s: float | None = None, frame_rate: float = 0.0) -> None:
        self.frame_s, self.frame_rate = frame_s, frame_rate
        self.began: float | None = None

    def late(self, now: float, pending: int, reading: Callable[[], bool]) -> str:
        """Why the unfinished frame (``pending`` bytes of it received) is too late, or "".
        Only while reading: frames held back are ours to wait for, and what they hold
        back is then whole frames, not one begun."""
        # (A TLS record cut short is invisible here: OpenSSL holds its bytes, at most
        # one record's 16 KiB. Such a connection sent no request lately, so a listener
        # short of slots takes its slot first.)
        if self.frame_s is None or not pending or not reading():
            self.began = None
            return ""
        if self.began is None:
            self.began = now
            return ""
        elapsed = now - self.began
        if elapsed > self.frame_s and pending < self.frame_rate * elapsed:
            return (
                f"no whole frame within {self.frame_s:g} s of its first bytes, and it came "
                f"slower than {self.frame_rate:g} bytes/s"
            )
        return ""


class Link:
    """A connected socket, optionally TLS, with non-blocking writes and one reading thread."""

    def __init__(
        self,
        sock: socket.socket,
        session: TLSSession | None = None,
        *,
        max_frame: int,
        write_stall_s: float = 30.0,
    ) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A peer gone without a word (a cut network) is noticed in ~25 s,
            # as gRPC's keepalive notices it, instead of never.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        self.sock = sock
        self._session = session
        self._lock = threading.Lock()  # the TLS session and the outbox
        # Written but not yet taken by the kernel: written under _lock; others only read
        # its length (a listener's limits: the same as backlog, without a Python call).
        self.outbox = bytearray()
        self._stalled_since: float | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._frames = FrameReader(max_frame)
        self._received = bytearray(RECEIVE_BYTES)
        self._received_view = memoryview(self._received)
        self._plain = bytearray(RECEIVE_BYTES if session is not None else 0)
        self._plain_view = memoryview(self._plain)
        self._write_stall_s = write_stall_s
        self._closing: str | None = None  # close once the outbox is flushed
        self._clock = _FrameClock()  # see run
        self._quick_poller: select.poll | None = None  # see _quick
        # Frames of writers that found another writer sending: it sends them along.
        self._queued: collections.deque[bytes] = collections.deque()
        self._writing = False  # a writer holds _lock
        self.closed: str | None = None  # why, once closed

    # ------------------------------------------------------------ any thread

    def peer_certificate(self) -> dict[str, object] | None:
        """The verified certificate the peer showed (None without TLS or without one)."""
        if self._session is None:
            return None
        cert = self._session.tls.getpeercert()
        return dict(cert) if cert else None

    @property
    def backlog(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return len(self.outbox)

    @property
    def stalled_for(self) -> float:
        """Seconds since the kernel last took any of the bytes waiting to be sent (0: none wait)."""
        since = self._stalled_since
        return 0.0 if since is None or not self.outbox else time.monotonic() - since

    def write(self, frame: bytes) -> None:
        """Queue ``frame`` to send; raises :class:`LinkClosed` on a closed link.

        A writer that finds another writer sending leaves its frame to it (``_queued``):
        one TLS record and one ``send`` for the frames of several threads, and no
        thread waiting for the lock meanwhile. Only a small frame, while few are left
        (``COMBINE_BYTES``, ``COMBINE_FRAMES``): what waits there is not in the outbox,
        which the listener's bounds on unsent bytes count. Whoever sends looks at ``_queued`` again
        once it let the lock go, so no frame is left behind."""
        lock, queued = self._lock, self._queued
        if not lock.acquire(blocking=False):
            if len(frame) > COMBINE_BYTES or len(queued) >= COMBINE_FRAMES:
                lock.acquire()  # a large frame, or many left already: its turn, in order
            else:
                queued.append(frame)
                if not lock.acquire(blocking=False):
                    if self._writing:
                        return  # that writer looks at _queued after it lets the lock go
                    lock.acquire()
                frame = b""
        first = True
        while True:
            try:
                if self.closed is not None or self._closing is not None:
                    if first:
                        raise LinkClosed(self.closed or self._closing or "closed")
                    return  # (the frames queued end with the link, as those in the outbox)
                self._writing = True
                if queued:
                    frame = _with_queued(queued, frame)
                woken = bool(frame) and _send(self, frame)
            finally:
                self._writing = False
                lock.release()
            if woken:
                self.wake()
            # Frames queued while we sent, after we looked (their writers saw us writing
            # and left them to us): ours to send, once whoever holds the lock now lets
            # it go (a reader or a flush would not send them).
            if not queued:
                return
            lock.acquire()
            frame, first = b"", False

    def close_after(self, frame: bytes, reason: str) -> None:
        """Send ``frame`` (a connection error) then close, telling :meth:`run` ``reason``."""
        with contextlib.suppress(LinkClosed):
            self.write(frame)
        with self._lock:
            if self._closing is None:
                # ``frame`` may have been left to a writer still sending (``_queued``),
                # which finds the link closing when it comes back for it, and the link
                # closes once its outbox is empty: what waits there goes now.
                if self.closed is None and self._queued:
                    with contextlib.suppress(LinkClosed):
                        _send(self, _with_queued(self._queued, b""))
                self._closing = reason
        self.wake()

    def close(self, reason: str) -> None:
        with self._lock:
            self._close_locked(reason)
        self.wake()

    def wake(self) -> None:
        """Make :meth:`run` look again (there is output, or reading may resume)."""
        with self._lock:
            # Once the link is released its pipe is closed, and its number may be
            # another file's or connection's by now: a byte written there would corrupt it.
            if self._wake_w < 0:
                return
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"!")

    def _close_locked(self, reason: str) -> None:
        if self.closed is not None:
            return
        self.closed = reason
        self.outbox.clear()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------ the link's thread

    def run(
        self,
        on_frames: Callable[[list[Frame]], None],
        *,
        reading: Callable[[], bool] = lambda: True,
        first_frame_s: float | None = None,
        frame_s: float | None = None,
        frame_rate: float = 0.0,
    ) -> str:
        """Read, hand frames on, flush the outbox, until the link closes; returns why.

        ``reading`` says whether to read now (False holds the peer back: TCP
        pushes back on it); without a byte of a frame within ``first_frame_s``
        the link closes, and so it does when a frame begun is not whole within
        ``frame_s`` of reading on while it came slower than ``frame_rate``
        bytes/s (a peer trickling a frame, or stopping inside one, would hold
        its buffer and its connection for ever; a slow network still gets its
        large frames through). ``on_frames`` may take its time (a request run on
        this thread): another thread may read meanwhile with :meth:`read_until`,
        under the same frame clock.
        """
        self._clock = _FrameClock(frame_s, frame_rate)
        try:
            self.take_early()
            self._loop(on_frames, reading, first_frame_s, None)
        except FrameError as exc:
            self.close_after(encode_error(0, "communication", f"bad frame: {exc}"), str(exc))
            _drain(self, 1.0)
        except (OSError, ssl.SSLError) as exc:
            self.close(f"connection failed: {exc}")
        finally:
            self.release()
        return self.closed or "closed"

    def take_early(self) -> None:
        """Take what the peer sent with the last bytes of the TLS handshake (its first
        request, a refusal): it waits in the session already, not in the socket."""
        if self._session is not None:
            _decrypt(self, None)

    def read_until(
        self,
        on_frames: Callable[[list[Frame]], None],
        done: Callable[[], bool],
        *,
        reading: Callable[[], bool] = lambda: True,
        deadline: float | None = None,
        owner: bool = True,
        quick: Awaited | None = None,
    ) -> None:
        """Read, hand frames on and flush the outbox on this thread until ``done()`` (checked
        after each frame and each wake-up), ``deadline`` (``time.monotonic``) or the link
        closes; one thread at a time. A bad frame or a failed connection closes the link
        (after a goodbye for a bad frame, flushed here unless ``owner`` is False: then
        :meth:`run`'s thread does it); :meth:`release` frees its descriptors. ``quick``: a
        caller waits for its reply, which has come once ``quick.finished`` (on a link
        without frame clocks: see ``_quick``)."""
        try:
            if quick is not None and _quick(self, on_frames, quick, deadline):
                return
            self._loop(on_frames, reading, None, done, deadline)
        except FrameError as exc:
            self.close_after(encode_error(0, "communication", f"bad frame: {exc}"), str(exc))
            if owner:
                _drain(self, 1.0)
        except (OSError, ssl.SSLError) as exc:
            self.close(f"connection failed: {exc}")

    def release(self) -> None:
        """Close the link and its descriptors (for a link read only by :meth:`read_until`)."""
        self.close(self.closed or "closed")
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._lock:
            for pipe_fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(pipe_fd)
            self._wake_r = self._wake_w = -1

    def _loop(
        self,
        on_frames: Callable[[list[Frame]], None],
        reading: Callable[[], bool],
        first_frame_s: float | None,
        stop: Callable[[], bool] | None,
        deadline: float | None = None,
    ) -> None:
        poller = select.poll()
        fd = self.sock.fileno()
        poller.register(self._wake_r, _READ)
        registered = -1
        got_frame = first_frame_s is None
        opened = time.monotonic()
        wait_ms = POLL_MS
        frames, clock = self._frames, self._clock
        while self.closed is None and (stop is None or not stop()):
            # The connection's own thread with nothing to time or flush: the quick loop
            # (a lone request's read and hand-on, without this loop's looks at its timers).
            if (
                stop is None
                and got_frame
                and clock.began is None
                and frames.whole is None
                and not frames.pending
                and not self.outbox
                and self._closing is None
                and reading()
            ):
                if registered != _READ:
                    poller.register(fd, _READ | _ERR)
                    registered = _READ
                if _serve_quick(self, poller, on_frames, reading) is None:
                    return
                continue
            # Frames held back while reading() was False go on once it is True.
            if frames.whole is not None and _hand_on(self, on_frames, reading, stop):
                got_frame, clock.began = True, None
            if stop is not None and stop():
                break
            flushing = bool(self.outbox)  # (one read: no lock unless closing)
            if self._closing is not None:
                with self._lock:
                    if not (flushing := bool(self.outbox)):
                        if stop is None:  # (else the link's owner closes)
                            self._close_locked(self._closing)
                        break
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait_ms = min(POLL_MS, max(1, int(left * 1000) + 1))
            events = (_READ if reading() and self._closing is None else 0) | (
                select.POLLOUT if flushing else 0
            )
            if events != registered:
                poller.register(fd, events | _ERR)
                registered = events
            for fd_, event in poller.poll(wait_ms):
                if fd_ == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    continue
                if event & select.POLLOUT:
                    _flush(self)
                if event & (_READ | _ERR):
                    received = self._receive()
                    if received is None:
                        return
                    if received and _hand_on(self, on_frames, reading, stop):
                        got_frame, clock.began = True, None
            now = time.monotonic()
            pending = frames.pending
            late = (
                clock.late(now, pending, reading)
                if (pending or clock.began is not None) and not self._closing
                else ""
            )
            if late:
                self.close_after(
                    encode_error(0, "communication", "a frame not finished in time; closing"),
                    late + self._inside_frame(),
                )
            # A first frame under way is the frame clock's to judge.
            if not got_frame and not pending and now - opened > (first_frame_s or 0):
                self.close_after(
                    encode_error(0, "communication", "no request in time; closing"),
                    f"no whole frame within {first_frame_s:g} s of connecting",
                )
            stalled = self._stalled_since
            if stalled is not None and now - stalled > self._write_stall_s:
                self.close(f"the peer read none of our replies for {self._write_stall_s:g} s")

    def _inside_frame(self) -> str:
        pending = self._frames.pending
        return f" inside a frame ({pending} bytes of it received)" if pending else ""

    def _receive(self) -> bool | None:
        """Receive what the socket holds into the frame reader: whether any bytes came
        (False: none yet); None when the peer closed."""
        try:
            size = self.sock.recv_into(self._received)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.close(f"receive failed{self._inside_frame()}: {exc}")
            return None
        if not size:
            self.close(f"the peer closed the connection{self._inside_frame()}")
            return None
        if self._session is None:
            self._frames.add(self._received_view[:size])
            return True
        return _decrypt(self, self._received_view[:size])


def peer_waiting(link: Link) -> bool:
    """Whether the peer sent bytes not handed on yet: a frame held, one begun, or the
    socket readable now (a poll that does not wait)."""
    if link._frames.whole is not None or link._frames.pending:
        return True
    if link._session is not None and link._session.incoming.pending:
        return True
    poller = select.poll()
    with contextlib.suppress(OSError, ValueError):
        poller.register(link.sock, _READ)
        return bool(poller.poll(0))
    return False


def _hand_on(
    link: Link,
    on_frames: Callable[[list[Frame]], None],
    reading: Callable[[], bool],
    stop: Callable[[], bool] | None = None,
) -> bool:
    """Hand on ``link``'s whole frames received, one at a time while ``reading()`` says so (a
    single read can hold hundreds: the rest wait as bytes). Whether any went on."""
    handed = False
    frames = link._frames
    while (
        frames.whole is not None
        and link._closing is None
        and reading()
        and (stop is None or not stop())
    ):
        frame = frames.take()
        if frame is None:
            break
        on_frames([frame])
        handed = True
    return handed


def _with_queued(queued: collections.deque[bytes], frame: bytes) -> bytes:
    """``frame`` and the frames ``queued`` (taken out of it), as one."""
    parts = [frame]
    with contextlib.suppress(IndexError):
        while True:
            parts.append(queued.popleft())
    return b"".join(parts)


def _send(link: Link, frame: bytes) -> bool:
    """Under ``link._lock``: encrypt ``frame`` and send what the kernel takes at once; the
    rest waits in the outbox. Whether the link's thread must be woken to flush it."""
    if link._session is not None:
        link._session.raw.write(frame)
        frame = link._session.outgoing.read()
    if link.outbox:
        link.outbox += frame
        return False
    try:
        sent = link.sock.send(frame)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        link._close_locked(f"send failed: {exc}")
        raise LinkClosed(link.closed or "closed") from None
    if sent < len(frame):
        link.outbox += frame[sent:]
        link._stalled_since = time.monotonic()
        return True
    return False


def _flush(link: Link) -> None:
    """Send what ``link``'s outbox holds, as much as the kernel takes."""
    with link._lock:
        if not link.outbox or link.closed is not None:
            return
        try:
            sent = link.sock.send(link.outbox)
        except BlockingIOError:
            return
        except OSError as exc:
            link._close_locked(f"send failed: {exc}")
            return
        del link.outbox[:sent]
        link._stalled_since = time.monotonic() if link.outbox else None


def _decrypt(link: Link, data: memoryview | None) -> bool | None:
    """Pass ``data`` through ``link``'s TLS session, and what it makes of it and of what
    it holds already to the frame reader (through the link's buffer ``_plain``): whether
    any bytes came (None when the peer closed the session). Also before any read
    (``data`` None): the handshake may have received the peer's first request with its
    last flight."""
    session = link._session
    assert session is not None
    tls, incoming, plain, frames = session.raw, session.incoming, link._plain, link._frames
    room = len(plain)
    got: bool | None = False
    with link._lock:
        if data is not None:
            incoming.write(data)
        while True:
            try:
                # (Given a buffer, read fills it and says how much.)
                size: int = tls.read(room, plain)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                got = None
                link._close_locked("the peer closed the TLS session")
                break
            if not size:
                break
            frames.add(link._plain_view[:size])
            got = True
            # Nothing more to decrypt: stop without another read that would only say so
            # (by raising). A read returns one record at most, and the buffer holds a whole
            # record's 16 KiB: only a full buffer can leave bytes of one in the session
            # (``pending``, not asked otherwise: each call into the session lets the GIL go,
            # and a calling thread woken meanwhile takes it).
            if not incoming.pending and (size < room or not tls.pending()):
                break
        if got is not None and session.outgoing.pending:
            link.outbox += session.outgoing.read()
    return got


def _drain(link: Link, seconds: float) -> None:
    """Flush ``link``'s outbox for up to ``seconds`` (a goodbye frame), then close it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with link._lock:
            if not link.outbox or link.closed is not None:
                break
        select.select([], [link.sock], [], 0.05)
        _flush(link)
    with link._lock:
        link._close_locked(link._closing or "closed")


def _serve_quick(
    link: Link,
    poller: select.poll,
    on_frames: Callable[[list[Frame]], None],
    reading: Callable[[], bool],
) -> bool | None:
    """``Link._loop`` of the link's own thread while it has nothing to time or flush (no
    frame begun, an empty outbox, not closing, reading on; ``poller`` watches the socket
    for reading and the wake-up pipe): wait, read, hand whole frames on. Back to the
    whole loop (True) as soon as any of that changes, on a wake-up, or after ``POLL_MS``
    without a byte; None when the peer closed."""
    wake, frames = link._wake_r, link._frames
    while True:
        events = poller.poll(POLL_MS)
        if not events:
            return True
        for fd, _event in events:
            if fd == wake:
                # Emptied here: the whole loop looks at what the wake-up was for (and
                # comes back here when it finds nothing to do).
                with contextlib.suppress(OSError):
                    os.read(wake, 4096)
                return True
        received = link._receive()
        if received is None:
            return None
        if received:
            while frames.whole is not None and link._closing is None and reading():
                frame = frames.take()
                if frame is None:
                    break
                on_frames([frame])
        if (
            frames.whole is not None
            or frames.pending
            or link.outbox
            or link._closing is not None
            or link.closed is not None
            or not reading()
        ):
            if frames.pending and link._clock.began is None:
                # A frame begun: its clock starts with its first bytes, not at the whole
                # loop's next look (up to POLL_MS later).
                link._clock.late(time.monotonic(), frames.pending, reading)
            return True


def _quick(
    link: Link,
    on_frames: Callable[[list[Frame]], None],
    awaited: Awaited,
    deadline: float | None,
) -> bool:
    """``Link._loop`` for a caller's reply, without its per-read set-up: wait for the
    socket, read, hand frames on until ``awaited.finished`` or ``deadline``. False as soon as
    something needs the whole loop (bytes to flush, a close under way; a wake-up is looked
    at here)."""
    if link.closed is not None or link._closing is not None:
        return False
    poller = link._quick_poller
    if poller is None:
        poller = link._quick_poller = select.poll()
        poller.register(link.sock.fileno(), _READ | _ERR)
        poller.register(link._wake_r, _READ)
    wake = link._wake_r
    frames = link._frames
    while True:
        if frames.whole is not None:
            # Every reply received goes to its waiter now, not only up to ours: the
            # others' would otherwise wait for the next reader (a thread woken for it).
            while frames.whole is not None:
                on_frames([frames.take()])  # type: ignore[list-item]
            if awaited.finished:
                return True
        if link.closed is not None:
            return True
        if link.outbox or link._closing is not None:
            return False
        wait_ms = POLL_MS
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            wait_ms = min(POLL_MS, int(left * 1000) + 1)
        events = poller.poll(wait_ms)
        readable = False
        for fd, _event in events:
            if fd == wake:
                # Emptied here, and what it was for is looked at above (bytes to flush, a
                # close under way: the whole loop's; a call finished: done).
                with contextlib.suppress(OSError):
                    os.read(wake, 4096)
            else:
                readable = True
        if readable and link._receive() is None:  # (it hands what it read to the frames)
            return True
