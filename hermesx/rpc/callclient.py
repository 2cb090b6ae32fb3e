"""The call channel's caller side: a connection per peer, calls multiplexed (docs/DESIGN.md §4.1).

A :class:`CallPool` keeps one :class:`CallConnection` per address. Any
number of threads call through one connection at once: each request gets an
id, its frame goes out at once (pipelined behind the others), and the
connection's reader thread hands each reply, in whatever order it comes, to
the thread waiting for that id. A failure becomes the same HermesError the
gRPC path raises (:func:`hermesx.rpc.status.transport_error`): the peer
unreachable, the deadline passed, refused by TLS or the role check; an error
the peer answered keeps its kind. A connection that fails leaves the pool;
the next call opens a new one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import grpc

from hermesx.core.errors import (
    CallTimeoutError,
    CommunicationError,
    HermesError,
    PayloadTooLargeError,
    UnreachableError,
    error_from_wire,
)
from hermesx.rpc import security
from hermesx.rpc.frames import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER,
    MAX_TIMEOUT_S,
    Error,
    Frame,
    FrameError,
    Reply,
    encode_request,
)
from hermesx.rpc.link import Link, LinkClosed, handshake
from hermesx.rpc.status import transport_error

if TYPE_CHECKING:
    from hermesx.rpc.wire import TLSIdentity

__all__ = ["CallConnection", "CallPool"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
# The longest a call waits: a longer deadline (or none, inf) is cut to it, so
# the request's timeout_s stays in the range its listener accepts.
LONGEST_WAIT_S = MAX_TIMEOUT_S / 10
# A listener may hold its caller back (its requests in flight at the limit) for
# as long as those take: only a call that timed out while the listener had
# read none of our requests for this long ends the connection.
WRITE_STALL_S = 30.0
# Why a connection was closed on purpose (ChannelPool.drop: the peer left the cluster).
DROPPED = "closed by this process"
# A connection without calls for this long is read by its own thread (to notice a
# peer that closes it); a caller then takes the reading over, at the cost of a
# thread hand-off: not after every short pause.
IDLE_READ_S = 1.0
# How long a caller waits at once for the idle reader's token before it looks again
# whether its reply came meanwhile.
TOKEN_WAIT_S = 0.01


class _Waiter:
    """One call in flight: its thread waits on ``done`` until the reply or a failure."""

    __slots__ = ("body", "done", "error", "finished")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.body: bytes | None = None
        self.error: HermesError | None = None
        self.finished = False  # body or error set (``done`` released once, then)


class _Drained:
    """What the connection's thread waits for when it reads for the calls in flight: none
    left (``finished``, as a caller's :class:`_Waiter` says its reply came)."""

    __slots__ = ("_pending",)

    def __init__(self, pending: dict[int, _Waiter]) -> None:
        self._pending = pending

    @property
    def finished(self) -> bool:
        return not self._pending

    def done(self) -> bool:
        return not self._pending


class CallConnection:
    """One connection to the call listener at ``address``; thread-safe.

    Whoever holds the connection's reading token reads the socket and hands each
    reply to the thread waiting for it. A caller whose reply nobody is reading for
    takes the token and reads itself, so a lone call's reply reaches its thread
    with no hand-off; when it leaves with other calls still waiting, the
    connection's own thread reads for them. That thread also reads while the
    connection is idle (after ``IDLE_READ_S`` without calls), to notice at once
    a peer that closes it, and gives the token to the next caller.
    """

    def __init__(
        self,
        address: str,
        context: ssl.SSLContext | None,
        *,
        peer: str = "",
        max_frame: int = DEFAULT_MAX_FRAME_BYTES,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.address = address
        self.peer = peer or f"call listener at {address}"
        host, _, port = address.rpartition(":")
        try:
            sock = socket.create_connection((host, int(port)), timeout=connect_timeout)
        except (OSError, ValueError) as exc:
            raise UnreachableError(f"{self.peer} is unreachable ({exc})") from None
        try:
            session = None
            if context is not None:
                session = handshake(
                    sock,
                    context,
                    server_side=False,
                    timeout=connect_timeout,
                    server_hostname=security.TARGET_NAME,
                )
        except ssl.SSLError as exc:
            sock.close()
            raise transport_error(
                grpc.StatusCode.UNAUTHENTICATED, self.peer, "", f"TLS: {exc.reason or exc}"
            ) from None
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise UnreachableError(f"{self.peer} is unreachable (TLS handshake: {exc})") from None
        self._link = Link(sock, session, max_frame=max_frame, write_stall_s=math.inf)
        self._max_frame = max_frame
        self._pending: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self._goodbye: Error | None = None
        self._token = threading.Lock()  # held by the thread reading the socket
        self._need_reader = threading.Event()  # calls wait that nobody reads for
        self._idle_reading = False  # the connection's thread reads an idle connection
        self._wanted = False  # a caller waits for the idle reader to give the token up
        self._last_call = time.monotonic()
        try:
            self._link.take_early()
        except FrameError as exc:
            self._link.close(f"bad frame: {exc}")  # its first call fails: unreachable
        threading.Thread(target=self._run, name=f"call-link {address}", daemon=True).start()

    @property
    def closed(self) -> str | None:
        """Why the connection closed (None while open)."""
        return self._link.closed

    def call(
        self, kind: str, body: bytes, timeout: float, meta: Mapping[str, str] | None = None
    ) -> bytes:
        """Send a request of ``kind`` and wait up to ``timeout`` seconds for its reply's body."""
        if not timeout > 0:
            # Past its deadline (a retry near its end, the time to connect taken
            # from it): never sent, as the listener would refuse the frame and
            # close the connection every other caller shares.
            raise transport_error(grpc.StatusCode.DEADLINE_EXCEEDED, self.peer, kind)
        timeout = min(timeout, LONGEST_WAIT_S)
        id = next(self._ids)
        frame = encode_request(id, kind, timeout, body, meta)
        if len(frame) - HEADER.size > self._max_frame:
            # The listener would end the connection on it, and every call sharing it.
            raise PayloadTooLargeError(
                f"{self.peer}: a {kind} request of {len(frame)} bytes is over the call "
                f"channel's {self._max_frame}-byte frame limit"
            )
        deadline = time.monotonic() + timeout
        self._last_call = deadline - timeout
        waiter = self._pending[id] = _Waiter()
        try:
            self._link.write(frame)
        except LinkClosed as exc:
            self._pending.pop(id, None)
            raise UnreachableError(f"{self.peer} is unreachable ({exc})") from None
        if not self._await(waiter, deadline):
            self._pending.pop(id, None)
            if self._link.stalled_for > WRITE_STALL_S:
                self._link.close(f"the listener read none of our requests for {WRITE_STALL_S:g} s")
            raise transport_error(grpc.StatusCode.DEADLINE_EXCEEDED, self.peer, kind)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.body is not None
        return waiter.body

    def close(self, reason: str = DROPPED) -> None:
        self._link.close(reason)

    # ------------------------------------------------------------ reading

    def _await(self, waiter: _Waiter, deadline: float) -> bool:
        """Wait for ``waiter``'s reply, reading the socket when nobody else does; False when
        ``deadline`` passed first."""
        while not waiter.finished:
            if self._link.closed is not None:
                self._need_reader.set()  # the connection's thread ends every call waiting
            elif self._idle_reading:
                self._wanted = True
                self._link.wake()
                left = deadline - time.monotonic()
                if left <= 0:
                    return waiter.finished
                # Briefly: the idle reader gives the token up at once, but the connection's
                # thread may take it back to read for every call waiting, this one's reply
                # included. Waiting on the token until the deadline would miss that reply,
                # and hold up every call whose reply depends on this one's caller.
                if self._token.acquire(timeout=min(TOKEN_WAIT_S, left)):
                    self._read(waiter, deadline)
                continue
            elif self._token.acquire(blocking=False):
                self._read(waiter, deadline)
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not waiter.done.acquire(timeout=left):
                return waiter.finished
            return True
        return True

    def _read(self, waiter: _Waiter, deadline: float) -> None:
        """Holding the token: read until ``waiter``'s reply came or ``deadline``; then hand
        the reading to the connection's thread if other calls wait."""
        try:
            if not waiter.finished:
                self._link.read_until(
                    self._received, lambda: waiter.finished, deadline=deadline, quick=waiter
                )
        finally:
            self._token.release()
            if self._pending or self._link.closed is not None:
                self._need_reader.set()

    def _run(self) -> None:
        """The connection's own thread: read for calls nobody reads for, and while idle."""
        link = self._link
        drained = _Drained(self._pending)
        while link.closed is None:
            if self._need_reader.wait(IDLE_READ_S):
                self._need_reader.clear()
                with self._token:
                    # Through the link's quick loop (a read, the replies handed on), as a
                    # caller reads its own reply: with several threads calling, this
                    # thread reads nearly every reply.
                    link.read_until(self._received, drained.done, quick=drained)
                if self._pending and link._closing is None:
                    # A call that came after the last look, and found the token still
                    # held, waits for its reply with nobody reading for it. (A link
                    # closing is closed by the thread that began it.)
                    self._need_reader.set()
            elif (
                not self._pending
                and time.monotonic() - self._last_call > IDLE_READ_S
                and self._token.acquire(blocking=False)
            ):
                try:
                    self._idle_reading, self._wanted = True, False
                    link.read_until(self._received, lambda: self._wanted or bool(self._pending))
                finally:
                    self._idle_reading = False
                    self._token.release()
                    if self._pending:  # a call came while we took the token: read for it
                        self._need_reader.set()
        with self._token:  # the last reader has left
            link.release()
        reason = link.closed or "closed"
        error = self._failure(reason)
        while self._pending:
            with contextlib.suppress(KeyError):
                _, waiter = self._pending.popitem()
                self._finish(waiter, None, error)
        log.debug("call connection to %s closed: %s", self.peer, reason)

    def _failure(self, reason: str) -> HermesError:
        """What a call cut short by the connection's end raises."""
        goodbye = self._goodbye
        if goodbye is not None:
            err = error_from_wire(goodbye.kind, goodbye.message)
            if err.kind == "not_authorized":
                return transport_error(
                    grpc.StatusCode.PERMISSION_DENIED, self.peer, "", goodbye.message
                )
            return CommunicationError(f"{self.peer} closed the connection: {goodbye.message}")
        if reason == DROPPED:
            # Cut short on purpose (the node left the cluster): not a sign the
            # call did not run, so not "unreachable" (see routing.departures).
            return CommunicationError(f"call to {self.peer} cut short: {reason}")
        return transport_error(grpc.StatusCode.UNAVAILABLE, self.peer, "", reason)

    @staticmethod
    def _finish(waiter: _Waiter, body: bytes | None, error: HermesError | None) -> None:
        waiter.body, waiter.error, waiter.finished = body, error, True
        waiter.done.release()

    def _received(self, frames: list[Frame]) -> None:
        for frame in frames:
            if type(frame) is Reply:
                waiter = self._pending.pop(frame.id, None)
                if waiter is not None:  # (as _finish does, one call less per reply)
                    waiter.body, waiter.finished = frame.body, True
                    waiter.done.release()
            elif isinstance(frame, Error):
                if frame.id == 0:
                    self._goodbye = frame
                    continue
                waiter = self._pending.pop(frame.id, None)
                if waiter is not None:
                    self._finish(waiter, None, error_from_wire(frame.kind, frame.message))
            else:
                raise FrameError("a request frame sent to a caller")


class CallPool:
    """One :class:`CallConnection` per address, opened on first use; thread-safe."""

    def __init__(self, tls: TLSIdentity | None = None) -> None:
        self._tls = tls
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._connections: dict[str, CallConnection] = {}
        self._opening: dict[str, threading.Lock] = {}

    def connection(
        self, address: str, peer: str = "", *, timeout: float = CONNECT_TIMEOUT_S
    ) -> CallConnection:
        """The open connection to ``address`` (opened now, within ``timeout`` seconds at most
        CONNECT_TIMEOUT_S, if there is none); UnreachableError when it cannot be opened."""
        found = self._connections.get(address)
        if found is not None and found.closed is None:
            return found
        deadline = time.monotonic() + timeout
        with self._lock:
            opening = self._opening.setdefault(address, threading.Lock())
        # Another caller may be opening it: wait for that within our own time only (to
        # a peer that never answers, each opener takes its whole connect timeout). Not
        # "unreachable": that would drop the connections to a peer only slow to answer.
        if not opening.acquire(timeout=max(0.0, timeout)):
            raise CallTimeoutError(
                f"{peer or f'call listener at {address}'}: no connection ready within "
                f"{timeout:g} s (another call is opening one)"
            )
        try:
            found = self._connections.get(address)
            if found is not None and found.closed is None:
                return found
            made = CallConnection(
                address,
                self._ssl_context(),
                peer=peer,
                connect_timeout=max(0.01, min(deadline - time.monotonic(), CONNECT_TIMEOUT_S)),
            )
            self._connections[address] = made
            return made
        finally:
            opening.release()

    def open(self, address: str) -> CallConnection | None:
        """The open connection to ``address``, if there is one (none is opened)."""
        found = self._connections.get(address)
        return found if found is not None and found._link.closed is None else None

    def drop(self, address: str) -> None:
        """Close the connection to ``address``: its calls in flight end at once."""
        with self._lock:
            found = self._connections.pop(address, None)
        if found is not None:
            found.close()

    def close(self) -> None:
        with self._lock:
            found = list(self._connections.values())
            self._connections.clear()
        for connection in found:
            connection.close()

    def _ssl_context(self) -> ssl.SSLContext | None:
        identity = self._tls
        if identity is None:
            return None
        if self._context is None:
            self._context = security.ssl_client_context(identity.directory, identity.name)
        return self._context
