"""A call-channel link with TLS: what its reader and its writers do at once (docs/DESIGN.md §4.1).

The TLS session is one OpenSSL object, so reading (decrypting what came) and
writing (sealing a frame) take the link's lock in turn. A writer that finds
the reader decrypting leaves its frame to it instead of waiting: what a
caller would notice if that went wrong is a frame lost or held until the
next read, or a writer held up behind every read.
"""

from __future__ import annotations

import pathlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from hermesx.rpc import security
from hermesx.rpc.frames import FrameReader, Request, encode_request
from hermesx.rpc.link import Link, TLSSession, _decrypt, handshake


@pytest.fixture
def tls_pair(tmp_path: pathlib.Path) -> Iterator[tuple[Link, socket.socket, TLSSession]]:
    """A link (the client's side, TLS) and its peer's socket with the peer's TLS session."""
    security.init_certs(tmp_path, "blue", {"n1": "node", "c1": "client"})
    ours, theirs = socket.socketpair()
    peer: dict[str, TLSSession] = {}

    def serve() -> None:
        context = security.ssl_server_context(tmp_path, "n1")
        peer["session"] = handshake(theirs, context, server_side=True, timeout=10.0)

    server = threading.Thread(target=serve)
    server.start()
    session = handshake(
        ours,
        security.ssl_client_context(tmp_path, "c1"),
        server_side=False,
        timeout=10.0,
        server_hostname=security.TARGET_NAME,
    )
    server.join(10.0)
    link = Link(ours, session, max_frame=1 << 20)
    theirs.settimeout(10.0)
    try:
        yield link, theirs, peer["session"]
    finally:
        link.release()
        theirs.close()


class _ReadFirst:
    """A TLS session's own object whose next ``read`` first runs ``during``."""

    def __init__(self, raw: object, during: Callable[[], None]) -> None:
        self._raw, self._during = raw, during

    def read(self, *args: object) -> object:
        during, self._during = self._during, lambda: None
        during()
        return self._raw.read(*args)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._raw, name)


def _early(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""


def _sealed(session: TLSSession, frame: bytes) -> bytes:
    session.tls.write(frame)
    return session.outgoing.read()


def _opened(sock: socket.socket, session: TLSSession, count: int) -> list[int]:
    """The ids of the next ``count`` frames the peer receives on ``sock``."""
    reader, ids = FrameReader(), list[int]()
    while len(ids) < count:
        data = sock.recv(65536)
        assert data, "the link closed"
        session.incoming.write(data)
        while session.incoming.pending or session.tls.pending():
            try:
                ids += [frame.id for frame in reader.feed(session.tls.read(65536))]
            except Exception:  # (SSLWantReadError: a record not whole yet)
                break
    return ids


def test_a_frame_written_while_the_reader_decrypts_is_sent_by_the_reader(
    tls_pair: tuple[Link, socket.socket, TLSSession],
) -> None:
    link, theirs, peer = tls_pair
    writer_waited: list[bool] = []

    def write_meanwhile() -> None:
        writer = threading.Thread(
            target=link.write, args=(encode_request(7, "echo", 5.0, b"meanwhile"),)
        )
        writer.start()
        writer.join(5.0)
        writer_waited.append(writer.is_alive())  # still waiting for the lock we hold

    assert link._session is not None
    link._session = TLSSession(
        link._session.tls,
        link._session.incoming,
        link._session.outgoing,
        _ReadFirst(link._session.raw, write_meanwhile),
    )
    # (After what the peer sent with its handshake's end: TLS 1.3's session tickets.)
    came = _early(link.sock) + _sealed(peer, encode_request(3, "echo", 5.0, b"from the peer"))
    assert _decrypt(link, memoryview(came)) is True
    assert writer_waited == [False], "the writer waited for the reader's lock"
    frame = link._frames.take()
    assert isinstance(frame, Request) and frame.id == 3
    # The frame left to the reader went out as it let the lock go, not at the next read.
    assert not link._queued
    assert _opened(theirs, peer, 1) == [7]
