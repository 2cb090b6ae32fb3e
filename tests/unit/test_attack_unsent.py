"""Attack: peers that ask for large replies and read none of them, on many connections.

docs/DESIGN.md §4.1 "Limits": what peers can make a listener hold is bounded.
A connection's requests already read still answer after its peer stops reading
(up to 64 of them: each small request may ask for a reply of megabytes), and a
peer that reads a byte now and then is never "stalled", so each connection held
up to 64 replies, and all of them together had no bound: 256 connections asking
for 4 MiB replies would hold 64 GiB. Now past ``max_unsent_bytes`` of replies
waiting on all connections, the connection with the most is closed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

import pytest

from hermesx.rpc.callclient import CallPool
from hermesx.rpc.callserver import CallLimits, CallServer
from hermesx.rpc.frames import encode_request

MiB = 2**20
PEERS, REQUESTS = 4, 64  # up to 256 MiB of replies held without the bound
# Below what the peers hold even when each connection's reading pauses at its own
# backlog (1 MiB, a reply's size): the bound on all of them together must act.
LIMIT = 2 * MiB
HELD = 128 * MiB  # far from the 256 MiB asked for


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_replies_nobody_reads_are_bounded_on_all_connections_together(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hermesx.rpc.callserver")
    limits = CallLimits(max_unsent_bytes=LIMIT, write_stall_s=60.0)
    served = CallServer("unsent server", workers=8, tls=None, limits=limits)
    ran: list[int] = []
    served.register("big", lambda call: ran.append(1) or b"x" * MiB, "Supervisor/Invoke")
    served.register("echo", lambda call: call.body, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    host, _, port = address.rpartition(":")
    before, most = _rss(), 0
    pool = CallPool()
    peers: list[socket.socket] = []
    try:
        for _ in range(PEERS):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"".join(encode_request(i, "big", 60.0, b"") for i in range(1, 65)))
            peers.append(sock)
        end = time.monotonic() + 8.0
        while time.monotonic() < end and len(ran) < PEERS * REQUESTS:
            most = max(most, _rss() - before)
            threading.Event().wait(0.05)
        for _ in range(20):
            most = max(most, _rss() - before)
            threading.Event().wait(0.05)
        # Someone who reads its replies is served all along.
        assert pool.connection(address).call("echo", b"still", 10.0) == b"still"
    finally:
        pool.close()
        for sock in peers:
            with contextlib.suppress(OSError):
                sock.close()
        served.stop()
    assert "reads its replies too slowly" in caplog.text
    # The replies held stayed near the bound (plus what is in flight and what the
    # allocator keeps), far from the 256 MiB asked for.
    assert most < HELD, f"{most / MiB:.0f} MiB held"
