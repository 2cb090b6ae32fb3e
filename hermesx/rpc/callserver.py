"""The call channel's listener: frames in, handlers by kind, replies out (docs/DESIGN.md §4.1).

A :class:`CallServer` accepts connections (at most ``max_connections``), runs
the cluster's mutual TLS on each (the certificates gRPC uses,
:mod:`hermesx.rpc.security`) and refuses a peer whose certificate is not of
the cluster. Each connection has a thread that reads frames
(:class:`~hermesx.rpc.link.Link`); each request goes to the handler
registered for its kind, on a bounded pool of workers (handlers block: an
atom's turn, a forward), after the role check of the RPC it stands for
(:data:`hermesx.rpc.roles.RPC_ROLES`). A connection has at most
``max_in_flight`` requests running or waiting; past that the server stops
reading it, and so it does while the replies its peer has not read pass
``max_backlog`` bytes. A connection that breaks the rules (a bad frame, an unknown
kind, no request soon after connecting) is closed with a one-line reason in
the log; the others go on.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from google.protobuf.message import DecodeError, Message

from hermesx.core.errors import (
    ConfigurationError,
    HermesError,
    NotAuthorizedError,
    UnreachableError,
)
from hermesx.observe.logflood import Throttle
from hermesx.rpc import roles, security
from hermesx.rpc.frames import (
    DEFAULT_MAX_FRAME_BYTES,
    Frame,
    FrameError,
    Request,
    encode_error,
    encode_reply,
)
from hermesx.rpc.link import Link, LinkClosed, handshake, peer_waiting
from hermesx.rpc.wire import TLSIdentity

__all__ = [
    "Call",
    "CallLimits",
    "CallServer",
    "Handler",
    "Inline",
    "WorkerPool",
    "parse_body",
    "yield_reader",
]

log = logging.getLogger(__name__)
# Its warnings name peers that misbehave: as many as they like (docs/DESIGN.md §10).
log.addFilter(Throttle())

# A request run on its connection's own thread that has taken this long gets
# another thread to read the connection meanwhile (so a slow call does not hold
# up the calls behind it for longer); the watch looks this often while such runs
# happen. Handlers that know they will wait say so at once (yield_reader). Much
# shorter, and a busy machine's scheduling alone makes quick calls "slow".
SLOW_INLINE_S = 0.01
# The watch stops looking after this long without a request run inline.
WATCH_LINGER_S = 0.5
# A connection counts as shared (its peer sends requests while others run) for this long
# after the last sign of it: a request read while another ran, or bytes waiting when a
# request run inline without another reader is about to reply (yield_reader's shared_only).
# A few durable calls' time: enough to bridge the gaps between concurrent callers' requests
# (they refresh it with nearly every request), short enough that a connection whose other
# callers went quiet soon stops paying for a second reader per call.
SHARED_S = 0.05


class _Inline(threading.local):
    """Per thread: ``run``, the (server, connection) of the request it runs inline."""

    run: tuple[CallServer, _Connection] | None = None


_inline = _Inline()


def yield_reader(*, shared_only: bool = False) -> None:
    """Called by a handler about to wait (for the atom's turn, for a durable checkpoint):
    when it runs on its connection's own thread, another thread reads the connection
    meanwhile.

    ``shared_only`` (a wait that is short and ends by itself, a durable call's checkpoint):
    only on a connection that carries other requests now or lately (``SHARED_S``). A
    connection with one caller at a time needs no second reader, which costs a thread
    woken and stopped again per request; a request that comes meanwhile waits for this
    one (or for the watch of slow ones, ``SLOW_INLINE_S``), and marks the connection
    shared for those after it."""
    run = _inline.run
    if run is None:
        return
    connection = run[1]
    if shared_only and connection.shared_until < time.monotonic():
        connection.unwatched = True  # _dispatch looks for requests that came meanwhile
        return
    run[0].rescue(connection)


class Call(NamedTuple):
    """One request as a handler sees it (a named tuple: one is made per request)."""

    kind: str
    body: bytes
    deadline: float  # time.monotonic() by which the caller stops waiting
    meta: Mapping[str, str] | None
    peer: security.PeerIdentity | None  # None on a cluster without TLS

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


_tuple: Callable[[type[Call], tuple[object, ...]], Call] = tuple.__new__

# A handler answers a request's body with its reply's body, or raises a HermesError.
Handler = Callable[[Call], bytes]
# Whether a kind's requests may run on their connection's own thread (CallServer.register):
# all or none, or a function of each request's meta that says.
Inline = bool | Callable[[Mapping[str, str] | None], bool]


M = TypeVar("M", bound=Message)
T = TypeVar("T")


def parse_body(kind: type[M], call: Call) -> M:
    """``call``'s body as the protobuf message ``kind``; a ConfigurationError if it is not."""
    try:
        parsed: M = kind.FromString(call.body)
    except DecodeError:
        raise ConfigurationError(
            f"a {call.kind} request whose body is not a {kind.__name__}"
        ) from None
    return parsed


class WorkerPool(ThreadPoolExecutor):
    """A process's one pool of workers (its gRPC server's and its call listener's), in
    which a request run on its connection's own thread takes a worker's place.

    Its tasks and the requests run inline are at most ``max_workers`` at once: a
    task waits for a place before it runs, and a request runs inline only when a
    place is free (:meth:`borrow`), so a node whose calls are all stuck has no
    place left for its own ``Status`` either way (docs/DESIGN.md §4.1).
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        # The places: a count under a plain lock (a threading.Semaphore is Python code
        # around a condition, and every request run inline takes and gives back one).
        self._places_lock = threading.Lock()
        self._freed = threading.Condition(self._places_lock)
        self._free = max_workers
        self._waiting = 0  # tasks waiting for a place

    def submit(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> Future[T]:
        return super().submit(self._run, fn, *args, **kwargs)

    def _run(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        with self._places_lock:
            while self._free <= 0:
                self._waiting += 1
                try:
                    self._freed.wait()
                finally:
                    self._waiting -= 1
            self._free -= 1
        try:
            return fn(*args, **kwargs)
        finally:
            self.give_back()

    def borrow(self) -> bool:
        """Take a worker's place for a request run inline (False: none is free)."""
        with self._places_lock:
            if self._free <= 0:
                return False
            self._free -= 1
            return True

    def give_back(self) -> None:
        with self._places_lock:
            self._free += 1
            if self._waiting:
                self._freed.notify()


def _foreign(identity: security.PeerIdentity | None, cluster: str) -> str:
    """Why a peer showing ``identity`` is not of ``cluster`` ("": it is)."""
    if identity is None:
        return f"no certificate of a hermesx cluster, not of cluster {cluster}"
    if identity.cluster != cluster:
        return f"a certificate of cluster {identity.cluster}, not of cluster {cluster}"
    return ""


def _room() -> bool:
    """Any pool but a WorkerPool has room for a request run inline."""
    return True


def _nothing() -> None:
    """Any pool but a WorkerPool has no place to give back."""


@dataclass(frozen=True, slots=True)
class CallLimits:
    """What one peer, or all of them, can make the server hold."""

    max_connections: int = 256
    max_in_flight: int = 64  # per connection
    # Bytes of request bodies running or waiting, all connections together, past which
    # no connection is read (64 requests of 8 MiB on each of 256 connections would be
    # 128 GiB); reading resumes as they finish.
    max_held_bytes: int = 256 * 2**20
    # Replies a connection's peer has not read yet, past which its requests
    # are no longer read (so at most this plus its requests in flight).
    max_backlog: int = 2**20
    # Replies written but not yet sent, all connections together, past which the
    # connection with the most is closed: a connection's requests already read still
    # answer past max_backlog (64 tiny requests of 4 MiB replies each), and a peer
    # reading a byte now and then never stalls, so 256 peers would hold 64 GiB.
    max_unsent_bytes: int = 256 * 2**20
    max_frame: int = DEFAULT_MAX_FRAME_BYTES
    handshake_s: float = 5.0
    first_frame_s: float = 10.0  # a connection that sends no request by then is closed
    # A frame begun must be whole within frame_s, or come at frame_rate bytes/s at
    # least (a trickling peer is closed; a slow network still sends 8 MiB in 8.5 min).
    frame_s: float = 10.0
    frame_rate: float = 16 * 1024
    # With every slot taken, a new connection takes the slot of the one whose last
    # request is oldest, if it has none running and sent none for this long.
    evict_idle_s: float = 1.0
    write_stall_s: float = 30.0  # a peer that reads none of its replies for this long


@dataclass(slots=True, eq=False)
class _Connection:
    peer: str  # "host:port" for messages
    sock: socket.socket | None = None  # closed to evict it during its TLS handshake
    link: Link | None = None
    identity: security.PeerIdentity | None = None
    in_flight: int = 0
    last_frame: float = 0.0  # time.monotonic() of its last request (or handshake, or accept)
    evicted: str | None = None  # why, when evicted during its TLS handshake
    # A request runs on the connection's own thread (one at most), since when.
    inline_since: float | None = None
    # While it runs: the other thread reading meanwhile (stop it, then wait for done).
    rescue_stop: threading.Event | None = None
    rescue_done: threading.Event | None = None
    # Until when (time.monotonic) it counts as shared (SHARED_S, yield_reader).
    shared_until: float = 0.0
    # A request run inline waits without another reader (yield_reader's shared_only).
    unwatched: bool = False


def _member(connection: _Connection) -> bool:
    identity = connection.identity
    return identity is not None and identity.role in roles.MEMBER_ROLES


def _idlest(connections: set[_Connection], evict_idle_s: float) -> _Connection | None:
    """Under the server's lock: the connection whose last request is oldest, of those with
    no request running, no reply waiting to go, and no request for ``evict_idle_s`` (one
    trickling a frame is idle too, and so is one still in a TLS handshake begun that
    long ago), never a member's; None if there is none."""
    cutoff = time.monotonic() - evict_idle_s
    idle = [
        c
        for c in connections
        if (c.link is None or (c.link.closed is None and c.link.backlog == 0))
        and c.in_flight == 0
        and c.last_frame < cutoff
        # A member's connection (a node forwarding, checkpointing) stays: else a
        # client keeping its own connections busy, and opening one more, would take
        # the cluster's own paths away. Members are few: the cluster's processes.
        and not _member(c)
    ]
    return min(idle, key=lambda c: c.last_frame, default=None)


def _evict(idle: _Connection, peer: str, slots: int) -> None:
    """Close ``idle`` for newcomer ``peer``: idle connections are harmless until the
    ``slots`` run out; then a caller that wants to call goes before one that does not."""
    idle_for = time.monotonic() - idle.last_frame
    why = f"and {peer} needed its slot ({slots} open, the limit)"
    if idle.link is not None:
        idle.link.close(f"evicted: no request for {idle_for:.0f} s, {why}")
    elif idle.sock is not None:
        # Peers that never finish a handshake would hold every slot for its 5 s
        # each, connecting again and again.
        idle.evicted = f"evicted: no TLS handshake in {idle_for:.0f} s, {why}"
        with contextlib.suppress(OSError):
            idle.sock.shutdown(socket.SHUT_RDWR)


def _shed_unsent(connections: set[_Connection], lock: threading.Lock, most: int) -> None:
    """Past ``most`` bytes of replies waiting to go on all ``connections`` (guarded by
    ``lock``), close the one that has the most (its peer reads the slowest; its outbox
    goes with it)."""
    with lock:
        links = [c.link for c in connections if c.link is not None and c.link.backlog]
    unsent = sum(each.backlog for each in links)
    if unsent <= most:
        return
    worst = max(links, key=lambda each: each.backlog)
    worst.close(
        f"its peer reads its replies too slowly: {worst.backlog} bytes wait for it, "
        f"{unsent} on all connections (at most {most})"
    )


class _SlowWatch:
    """The thread that looks every SLOW_INLINE_S for requests run inline too long
    (``look(now)``); it sleeps once none ran inline for WATCH_LINGER_S."""

    def __init__(self, look: Callable[[float], None], stopping: threading.Event) -> None:
        self._look = look
        self._stopping = stopping
        self._cond = threading.Condition()
        self.idle = False
        self.started = False
        self.last = 0.0

    def touch(self, now: float) -> None:
        """A request runs inline since ``now``: watch (wake up, or start). (The server
        sets ``last``, then calls it only while the watch is idle or not started: in
        that order, a watch going idle in between sees the new ``last`` and stays, or
        is seen idle and is woken; the other way round it could sleep through a run.)"""
        self.last = now
        if self.idle or not self.started:
            with self._cond:
                if not self.started:
                    self.started = True
                    threading.Thread(target=self._run, name="call-watch", daemon=True).start()
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        while not self._stopping.is_set():
            time.sleep(SLOW_INLINE_S)
            now = time.monotonic()
            self._look(now)
            if now - self.last > WATCH_LINGER_S:
                with self._cond:
                    self.idle = True
                    while (
                        time.monotonic() - self.last > WATCH_LINGER_S
                        and not self._stopping.is_set()
                    ):
                        self._cond.wait()
                    self.idle = False


class CallServer:
    """A call-channel listener of process ``name`` (for messages: ``"node n1"``)."""

    def __init__(
        self,
        name: str,
        *,
        workers: int | Executor,
        tls: TLSIdentity | None,
        limits: CallLimits | None = None,
    ) -> None:
        """``workers``: how many threads run handlers, or the pool to run them on (a
        process's one pool of workers, shared with its gRPC server; not shut down here)."""
        self.name = name
        self.limits = limits or CallLimits()
        self._tls = tls
        self._context: ssl.SSLContext | None = (
            security.ssl_server_context(tls.directory, tls.name) if tls is not None else None
        )
        self._handlers: dict[str, tuple[Handler, frozenset[str], Inline]] = {}
        self._own_pool = not isinstance(workers, Executor)
        self._pool: Executor = (
            workers
            if isinstance(workers, Executor)
            else WorkerPool(workers, thread_name_prefix="call-worker")
        )
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._held_bytes = 0  # bodies of the requests running or waiting (max_held_bytes)
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        # Threads that read a connection while its own thread runs a slow request.
        self._readers = ThreadPoolExecutor(
            max_workers=self.limits.max_connections, thread_name_prefix="call-reader"
        )
        self._watch = _SlowWatch(self._slow, self._stopping)
        # Takes a worker's place for a request run inline (False: none is free), and
        # gives it back.
        pool = self._pool
        self._borrow = pool.borrow if isinstance(pool, WorkerPool) else _room
        self._give_back = pool.give_back if isinstance(pool, WorkerPool) else _nothing

    def register(self, kind: str, handler: Handler, rpc: str, *, inline: Inline = False) -> None:
        """Serve requests of ``kind`` with ``handler``, to the roles that may call gRPC ``rpc``.

        ``inline``: a request of this kind runs on its connection's own thread when
        no other request of the connection does (no hand-off to a worker: the
        quickest reply), another thread reading the connection once it takes
        ``SLOW_INLINE_S`` or calls :func:`yield_reader`; the others, and every request
        without it (a handler that waits for others: a group commit), run on the pool."""
        self._handlers[kind] = (handler, roles.allowed_roles(rpc), inline)

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def held_bytes(self) -> int:
        """Bytes of the request bodies running or waiting now."""
        return self._held_bytes

    # ------------------------------------------------------------ start, stop

    def start(self, listen: str, *, any_port_else: bool = False) -> str:
        """Listen on ``listen`` (``host:port``, port 0 for any); the address bound.
        With ``any_port_else``, a port in use makes it listen on any free one instead."""
        host, _, port = listen.rpartition(":")
        try:
            try:
                listener = socket.create_server((host, int(port)), backlog=512)
            except OSError as exc:
                if not any_port_else or exc.errno != errno.EADDRINUSE:
                    raise
                log.warning("%s: %s is in use; listening for calls on any port", self.name, listen)
                listener = socket.create_server((host, 0), backlog=512)
        except (OSError, ValueError) as exc:
            raise UnreachableError(
                f"{self.name}: cannot listen for calls on {listen}: {exc}"
            ) from None
        listener.settimeout(0.5)
        self._listener = listener
        threading.Thread(target=self._accept, name="call-accept", daemon=True).start()
        return f"{host}:{listener.getsockname()[1]}"

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            links = [c.link for c in self._connections if c.link is not None]
        for link in links:
            link.close("the server stops")
        self._watch.stop()
        self._readers.shutdown(wait=False, cancel_futures=True)
        if self._own_pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ connections

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)  # out of descriptors: let connections end
                continue
            peer = f"{address[0]}:{address[1]}"
            with self._lock:
                full = len(self._connections) >= self.limits.max_connections
                idle = _idlest(self._connections, self.limits.evict_idle_s) if full else None
                if idle is not None:  # its slot is the newcomer's now; its thread ends later
                    self._connections.discard(idle)
                if not full or idle is not None:
                    connection = _Connection(peer, sock=sock, last_frame=time.monotonic())
                    self._connections.add(connection)
            if idle is not None:
                _evict(idle, peer, self.limits.max_connections)
            elif full:
                log.warning(
                    "%s: refused the call connection from %s: %d connections open, the limit",
                    self.name,
                    peer,
                    self.limits.max_connections,
                )
                sock.close()
                continue
            threading.Thread(
                target=self._serve, args=(sock, connection), name="call-link", daemon=True
            ).start()

    def _serve(self, sock: socket.socket, connection: _Connection) -> None:
        try:
            reason = self._serve_link(sock, connection)
        except Exception as exc:  # a connection's failure must not end the listener
            reason = f"failed: {type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._connections.discard(connection)
            with contextlib.suppress(OSError):
                sock.close()
        reason = connection.evicted or reason
        if reason is not None:
            log.warning(
                "%s: closed the call connection from %s: %s", self.name, connection.peer, reason
            )

    def _serve_link(self, sock: socket.socket, connection: _Connection) -> str | None:
        """Serve one connection until it ends; why it ended, when worth a warning."""
        session = None
        if self._context is not None:
            try:
                session = handshake(
                    sock, self._context, server_side=True, timeout=self.limits.handshake_s
                )
            except ssl.SSLError as exc:
                return f"TLS handshake refused: {exc.reason or exc}"
            except TimeoutError as exc:
                return str(exc)
            except OSError as exc:
                return f"no TLS handshake: {exc}"
        connection.last_frame = time.monotonic()
        link = connection.link = Link(
            sock,
            session,
            max_frame=self.limits.max_frame,
            write_stall_s=self.limits.write_stall_s,
        )
        if self._stopping.is_set():
            return None
        if self._tls is not None:
            identity = security.certificate_identity(link.peer_certificate())
            refusal = _foreign(identity, self._tls.cluster)
            if refusal:
                link.close_after(encode_error(0, "not_authorized", f"refused: {refusal}"), refusal)
                link.run(lambda frames: None)
                return f"refused: {refusal}"
            connection.identity = identity
        reason = link.run(
            # (partial, not lambda: one Python frame less per request and per look.)
            functools.partial(self._received, True, connection, link),
            reading=functools.partial(_reading, self, connection, link),
            first_frame_s=self.limits.first_frame_s,
            frame_s=self.limits.frame_s,
            frame_rate=self.limits.frame_rate,
        )
        if reason in ("the peer closed the connection", "the server stops"):
            log.debug("%s: call connection from %s ended: %s", self.name, connection.peer, reason)
            return None
        return reason

    # ------------------------------------------------------------ requests

    def _received(
        self, own_thread: bool, connection: _Connection, link: Link, frames: list[Frame]
    ) -> None:
        now = time.monotonic()
        for frame in frames:
            if type(frame) is not Request:
                raise FrameError(f"a {type(frame).__name__.lower()} frame sent to the server")
            entry = self._handlers.get(frame.kind)
            if entry is None:
                raise FrameError(f"a request of unknown kind {frame.kind!r}")
            handler, allowed, inline = entry
            identity = connection.identity
            if self._tls is not None and (identity is None or identity.role not in allowed):
                role = (identity.role if identity else None) or "none"
                refusal = NotAuthorizedError(
                    f"{self.name} refused {frame.kind}: role {role} may not call it "
                    f"(it is for {', '.join(sorted(allowed))})"
                )
                log.warning("%s (from %s)", refusal, connection.peer)
                link.write(encode_error(frame.id, refusal.kind, str(refusal)))
                continue  # and no activity: refusals must not keep a slot from others
            connection.last_frame = now
            if connection.in_flight:  # it came while another ran: the connection is shared
                connection.shared_until = now + SHARED_S
            with self._lock:
                connection.in_flight += 1
                self._held_bytes += len(frame.body)
            # (Made with tuple's constructor: a named tuple's own is a Python call.)
            call = _tuple(Call, (frame.kind, frame.body, now + frame.timeout, frame.meta, identity))
            here = own_thread and (inline is True or (inline is not False and inline(frame.meta)))
            if here and self._borrow():
                self._run_inline(connection, link, frame.id, handler, call)
            else:
                self._pool.submit(self._dispatch, connection, link, frame.id, handler, call)

    # ------------------------------------------------------------ requests run inline

    def _run_inline(
        self, connection: _Connection, link: Link, id: int, handler: Handler, call: Call
    ) -> None:
        """Run a request on the connection's own thread; meanwhile, once it is slow, another
        thread reads the connection (its requests go to the pool)."""
        now = connection.inline_since = connection.last_frame  # when the request came
        watch = self._watch
        watch.last = now  # (first: see _SlowWatch.touch)
        if watch.idle or not watch.started:
            watch.touch(now)
        _inline.run = (self, connection)
        try:
            # (It ends the run, under the lock it takes for the request's end anyway.)
            self._dispatch(connection, link, id, handler, call)
        finally:
            _inline.run = None
            connection.unwatched = False
            self._give_back()
            # The run has ended (inline_since None): rescue() starts no reader now, so
            # the one that read meanwhile, if any, is only this thread's to end.
            stop, done = connection.rescue_stop, connection.rescue_done
            connection.rescue_stop = connection.rescue_done = None
        if stop is not None and done is not None:
            _end_reader(link, stop, done, self._stopping)

    def rescue(self, connection: _Connection) -> None:
        """Have another thread read ``connection`` while its own thread runs a request."""
        link = connection.link
        with self._lock:
            if connection.inline_since is None or connection.rescue_stop is not None:
                return
            if link is None or self._stopping.is_set():
                return
            stop = connection.rescue_stop = threading.Event()
            done = connection.rescue_done = threading.Event()

        def read() -> None:
            try:
                # Only one thread reads at a time: the connection's own waits for this
                # one to return before it reads again; closing the socket stays its part.
                link.read_until(
                    functools.partial(self._received, False, connection, link),
                    stop.is_set,
                    reading=functools.partial(_reading, self, connection, link),
                    owner=False,
                )
            except Exception:  # its own thread goes on reading; this one must not stop it
                log.exception("%s: reading the call connection from %s", self.name, connection.peer)
            finally:
                done.set()

        try:
            self._readers.submit(read)
        except RuntimeError:  # shut down: the server stops
            done.set()

    def _slow(self, now: float) -> None:
        """Give each request run inline for SLOW_INLINE_S a reader for its connection."""
        with self._lock:
            slow = [
                c
                for c in self._connections
                if c.inline_since is not None
                and now - c.inline_since >= SLOW_INLINE_S
                and c.rescue_stop is None
            ]
        for connection in slow:
            self.rescue(connection)

    def _dispatch(
        self, connection: _Connection, link: Link, id: int, handler: Handler, call: Call
    ) -> None:
        limits = self.limits
        try:
            if call.deadline <= time.monotonic():
                frame = encode_error(
                    id, "timeout", f"{call.kind} waited past its deadline at {self.name}"
                )
            else:
                frame = encode_reply(id, handler(call))
        except HermesError as exc:
            frame = encode_error(id, exc.kind, str(exc))
        except Exception as exc:  # a handler's bug answers that call, not the connection
            log.exception("%s: %s failed", self.name, call.kind)
            frame = encode_error(id, "hermes", f"{self.name}: {call.kind} failed: {exc}")
        if len(frame) - 4 > limits.max_frame:
            frame = encode_error(
                id,
                "payload_too_large",
                f"{call.kind}: the reply is over {limits.max_frame} bytes",
            )
        if connection.unwatched and peer_waiting(link):
            # Its peer sent more while it ran without another reader: shared after all.
            # (Looked at before the reply leaves: what comes after may answer it.)
            connection.shared_until = time.monotonic() + SHARED_S
        try:
            link.write(frame)
            if link.outbox:  # its peer is behind: are all of them together too far?
                _shed_unsent(self._connections, self._lock, self.limits.max_unsent_bytes)
        except LinkClosed:
            pass
        finally:
            size = len(call.body)
            with self._lock:
                if _inline.run is not None:  # run inline: the run ends here
                    connection.inline_since = None
                connection.in_flight -= 1
                held = self._held_bytes = self._held_bytes - size
                resume = connection.in_flight == limits.max_in_flight - 1
                woken = [link] if resume else []
                if held < limits.max_held_bytes <= held + size:
                    # Every connection waited for the bytes held to go down: wake them all.
                    woken = [c.link for c in self._connections if c.link is not None]
            for each in woken:
                each.wake()


def _end_reader(
    link: Link, stop: threading.Event, done: threading.Event, stopping: threading.Event
) -> None:
    """Stop the thread that read ``link`` while a request ran inline, and wait for it."""
    stop.set()
    link.wake()
    # (A reader never started when the server stops: its links are closed.)
    while not done.wait(1.0) and not stopping.is_set():
        pass


def _reading(server: CallServer, connection: _Connection, link: Link) -> bool:
    """Whether ``server`` reads ``connection`` now: its requests in flight, the request bodies
    held on all connections and its replies not yet sent are under their limits."""
    return (
        connection.in_flight < server.limits.max_in_flight
        and server._held_bytes < server.limits.max_held_bytes
        and len(link.outbox) < server.limits.max_backlog
    )
