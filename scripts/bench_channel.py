"""Candidates for the call channel, measured here (docs/PERFORMANCE.md "The call channel").

A ping-pong of 100-byte payloads on 127.0.0.1 between a server process and a
client process, length-prefixed frames, the server handing each request to a
worker pool as the node must (calls block). Each candidate: p50 with one
client, calls/s with 8 client threads (one connection each), with and
without mutual TLS (the cluster's certificates). Run:

    python scripts/bench_channel.py [--calls N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import pathlib
import socket
import ssl
import statistics
import struct
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

HEADER = struct.Struct("!I")
PAYLOAD = b"x" * 100


def _contexts(certdir: pathlib.Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from hermesx.rpc import security

    certs = security.init_certs(certdir, "bench", {"n1": "node", "c1": "client"})
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.cert("n1"), certs.key("n1"))
    server.load_verify_locations(certs.ca_cert)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(certs.cert("c1"), certs.key("c1"))
    client.load_verify_locations(certs.ca_cert)
    return server, client


# ------------------------------------------------------------------ servers


def _asyncio_server(port: Any, tls: ssl.SSLContext | None, use_uvloop: bool) -> None:
    pool = ThreadPoolExecutor(16)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                (n,) = HEADER.unpack(await reader.readexactly(4))
                body = await reader.readexactly(n)
                reply = await loop.run_in_executor(pool, bytes, body)
                writer.write(HEADER.pack(len(reply)) + reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
        port.value = server.sockets[0].getsockname()[1]
        await server.serve_forever()

    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def _thread_server(port: Any, tls: ssl.SSLContext | None) -> None:
    pool = ThreadPoolExecutor(16)
    listener = socket.create_server(("127.0.0.1", 0))
    port.value = listener.getsockname()[1]

    def serve(sock: socket.socket) -> None:
        lock = threading.Lock()
        if tls is not None:
            sock = tls.wrap_socket(sock, server_side=True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = sock.makefile("rb")

        def answer(body: bytes) -> None:
            reply = bytes(body)
            with lock:
                sock.sendall(HEADER.pack(len(reply)) + reply)

        while True:
            head = f.read(4)
            if len(head) < 4:
                return
            pool.submit(answer, f.read(HEADER.unpack(head)[0]))

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def _zmq_server(port: Any) -> None:
    import zmq

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port.value = router.bind_to_random_port("tcp://127.0.0.1")
    pool = ThreadPoolExecutor(16)
    # Replies go back through the one socket's thread (zmq sockets are not thread-safe).
    inproc = ctx.socket(zmq.PULL)
    inproc.bind("inproc://replies")
    lock = threading.local()

    def answer(ident: bytes, body: bytes) -> None:
        push = getattr(lock, "push", None)
        if push is None:
            push = lock.push = ctx.socket(zmq.PUSH)
            push.connect("inproc://replies")
        push.send_multipart([ident, bytes(body)])

    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(inproc, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll():
            if sock is router:
                ident, body = router.recv_multipart()
                pool.submit(answer, ident, body)
            else:
                router.send_multipart(inproc.recv_multipart())


def _hermesx_server(port: Any, tls: Any) -> None:
    """The chosen design as built: hermesx.rpc.callserver with an echo handler."""
    from hermesx.rpc.callserver import CallServer

    server = CallServer("bench", workers=16, tls=tls)
    server.register("echo", lambda call: call.body, "Supervisor/Invoke")
    port.value = int(server.start("127.0.0.1:0").rpartition(":")[2])
    threading.Event().wait()


# ------------------------------------------------------------------ clients


def _socket_client(port: int, tls: ssl.SSLContext | None) -> Any:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="hermesx")
    f = sock.makefile("rb")

    def call() -> bytes:
        sock.sendall(HEADER.pack(len(PAYLOAD)) + PAYLOAD)
        (n,) = HEADER.unpack(f.read(4))
        return f.read(n)

    return call


def _zmq_client(port: int, tls: ssl.SSLContext | None) -> Any:
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{port}")

    def call() -> bytes:
        sock.send(PAYLOAD)
        return bytes(sock.recv())

    return call


def _hermesx_client(port: int, tls: Any) -> Any:
    """One hermesx.rpc.callclient connection per client, as a process keeps per node."""
    from hermesx.rpc.callclient import CallPool

    connection = CallPool(tls).connection(f"127.0.0.1:{port}")
    return lambda: connection.call("echo", PAYLOAD, 5.0)


def _measure(connect: Any, port: int, tls: ssl.SSLContext | None, calls: int) -> dict[str, float]:
    one = connect(port, tls)
    for _ in range(200):
        one()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        one()
        times.append(time.perf_counter() - t)
    p50 = statistics.median(times) * 1e6
    clients = [connect(port, tls) for _ in range(8)]
    per = calls // 2
    start = time.perf_counter()
    threads = [threading.Thread(target=lambda c=c: [c() for _ in range(per)]) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = 8 * per / (time.perf_counter() - start)
    return {"p50_us": round(p50, 1), "calls_per_s_8": round(rate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    certdir = pathlib.Path(tempfile.mkdtemp(prefix="benchcerts-"))
    server_tls, client_tls = _contexts(certdir)
    from hermesx.rpc.wire import TLSIdentity

    identities = (TLSIdentity(certdir, "n1", "bench"), TLSIdentity(certdir, "c1", "bench"))
    candidates: list[tuple[str, Any, tuple[Any, ...], Any, bool]] = [
        ("asyncio streams", _asyncio_server, (False,), _socket_client, True),
        ("asyncio streams + uvloop", _asyncio_server, (True,), _socket_client, True),
        ("blocking sockets, reader thread", _thread_server, (), _socket_client, True),
        ("pyzmq ROUTER/DEALER", _zmq_server, (), _zmq_client, False),
        ("hermesx.rpc call channel (built)", _hermesx_server, (), _hermesx_client, True),
    ]
    results = []
    for name, server, extra, client, can_tls in candidates:
        for tls in (False, True):
            if tls and not can_tls:
                continue
            port = multiprocessing.Value("i", 0)
            ours = server is _hermesx_server
            server_side = (identities[0] if ours else server_tls) if tls else None
            client_side = (identities[1] if ours else client_tls) if tls else None
            sargs = (port,) if server is _zmq_server else (port, server_side, *extra)
            proc = multiprocessing.Process(target=server, args=sargs, daemon=True)
            proc.start()
            try:
                while port.value == 0:
                    time.sleep(0.01)
                figures = _measure(client, port.value, client_side, args.calls)
            finally:
                proc.terminate()
                proc.join()
            results.append({"candidate": name, "tls": tls, **figures})
            if not args.json:
                print(
                    f"{name:34} tls={'on ' if tls else 'off'} "
                    f"p50 {figures['p50_us']:7.1f} µs  8 clients {figures['calls_per_s_8']:7d}/s"
                )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
