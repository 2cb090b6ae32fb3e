"""The floor a call can reach here: raw TCP ping-pong, measured by `hermesx bench invoke`.

An asyncio server (:class:`asyncio.Protocol`, the default event loop) in a
process of its own echoes length-prefixed frames (a 4-byte big-endian length,
then that many bytes) on 127.0.0.1; each client thread holds one blocking
socket and sends a 100-byte payload, then reads the echo back in full. No
serialization, no TLS, no dispatch: what Python costs for one request and
one reply over loopback on this machine, the yardstick for every remote
figure of the benchmark (docs/PERFORMANCE.md "How to measure").
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator

__all__ = ["FloorClient", "floor_server", "port_server"]

_LEN = struct.Struct(">I")
# A frame larger than this closes the connection: the server echoes, it does not buffer.
_MAX_FRAME = 1 << 20


class _EchoProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= _LEN.size:
            (size,) = _LEN.unpack_from(buf)
            if size > _MAX_FRAME:
                assert self._transport is not None
                self._transport.close()
                return
            end = _LEN.size + size
            if len(buf) < end:
                return
            assert self._transport is not None
            self._transport.write(bytes(buf[:end]))
            del buf[:end]


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoProtocol, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    closed = asyncio.Event()
    # The benchmark closes our stdin to stop us; a thread waits for that.
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(closed.set)), daemon=True
    ).start()
    async with server:
        await closed.wait()


@contextlib.contextmanager
def port_server(module: str, *args: str) -> Iterator[int]:
    """``python -m module args`` in a process of its own, which prints its port first.

    The server runs until its stdin closes; yields the port on 127.0.0.1.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"the benchmark's server {module} did not start")
        yield int(line)
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def floor_server() -> contextlib.AbstractContextManager[int]:
    """The TCP floor's echo server in a process of its own; yields its port on 127.0.0.1."""
    return port_server("hermesx.bench.floor")


class FloorClient:
    """One connection per client thread; :meth:`call` is one ping-pong of ``payload``."""

    def __init__(self, port: int, payload: bytes) -> None:
        self._port = port
        self._frame = _LEN.pack(len(payload)) + payload
        self._local = threading.local()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def _socket(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", self._port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.sock = sock
            self._local.reply = bytearray(len(self._frame))
            with self._lock:
                self._sockets.append(sock)
        return sock

    def call(self) -> bytes:
        sock = self._socket()
        sock.sendall(self._frame)
        reply: bytearray = self._local.reply
        view = memoryview(reply)
        got = 0
        while got < len(reply):
            n = sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionError("the TCP floor's echo server closed the connection")
            got += n
        return bytes(reply)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


if __name__ == "__main__":
    asyncio.run(_serve())
