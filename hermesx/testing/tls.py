"""A TLS client whose bytes the test sends itself: to split, delay or merge TLS records on purpose.

The TLS runs over memory BIOs on a plain socket, so a test decides what
leaves when: the handshake's last flight together with the first request,
half a record and then nothing, and so on (docs/DESIGN.md §4.1 "Limits").
"""

from __future__ import annotations

import socket
import ssl

__all__ = ["MemoryTLS"]


class MemoryTLS:
    """The client end of a TLS connection over ``sock``, driven by hand."""

    def __init__(self, context: ssl.SSLContext, sock: socket.socket, server_hostname: str) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)

    def handshake(self) -> None:
        """Complete the handshake; its last flight stays unsent, in :meth:`pending`."""
        while True:
            try:
                self.tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                if pending := self.outgoing.read():
                    self.sock.sendall(pending)
                self.incoming.write(self.sock.recv(65536))

    def write(self, data: bytes) -> bytes:
        """``data`` as TLS records, after whatever was pending: the bytes to send."""
        self.tls.write(data)
        return self.outgoing.read()

    def pending(self) -> bytes:
        """The TLS bytes not sent yet (the handshake's last flight)."""
        return self.outgoing.read()

    def read(self) -> bytes:
        """Plain bytes from the next TLS data received; b"" when the peer closed the socket
        or no whole record arrived yet (the test then reads again)."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.incoming.write(data)
        try:
            return self.tls.read(65536)
        except ssl.SSLWantReadError:
            return b""
