"""Attack: a client certificate used to push the cluster's own connections off a listener.

docs/DESIGN.md §4.1 "Limits": with every slot taken, a newcomer takes the slot of
an idle connection, so idle peers cannot refuse a caller; and clients cannot take
the cluster's own paths (a node's forwards, its checkpoints) away by opening
connections. A peer holding a client certificate kept its connections "active"
with a request every fraction of a second (even requests its role may not make,
refused for nothing), then opened one more: the only idle connection left was a
member's, so it was evicted, and the member's next connection was refused.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import threading
from collections.abc import Iterator

import pytest

from hermesx.core.errors import HermesError
from hermesx.rpc import security
from hermesx.rpc.callclient import CallConnection, CallPool
from hermesx.rpc.callserver import CallLimits, CallServer
from hermesx.rpc.wire import TLSIdentity
from hermesx.testing.wait import wait_until

SLOTS = 3


@pytest.fixture
def listener(tmp_path: pathlib.Path) -> Iterator[str]:
    security.init_certs(tmp_path, "evict", {"s1": "storesite", "n1": "node", "c1": "client"})
    limits = CallLimits(max_connections=SLOTS, evict_idle_s=0.3)
    served = CallServer(
        "storesite s1", workers=4, tls=TLSIdentity(tmp_path, "s1", "evict"), limits=limits
    )
    served.register("echo", lambda call: call.body, "Supervisor/Invoke")
    served.register("checkpoint", lambda call: b"stored", "Storesite/PutCheckpoint")
    yield served.start("127.0.0.1:0")
    served.stop()


def _keep_busy(connections: list[CallConnection], kind: str, stop: threading.Event) -> None:
    """The attacker: a request on each of its connections every 0.1 s."""
    while not stop.wait(0.1):
        for connection in connections:
            # Refused (not_authorized), or evicted itself: either is the attacker's.
            with contextlib.suppress(HermesError):
                connection.call(kind, b"x", 5.0)


@pytest.mark.parametrize("kind", ["checkpoint", "echo"])
def test_a_client_keeping_its_connections_busy_cannot_evict_a_members(
    tmp_path: pathlib.Path, listener: str, kind: str
) -> None:
    """``checkpoint``: requests a client may not make (a storesite's whole channel);
    ``echo``: requests it may make."""
    node = CallPool(TLSIdentity(tmp_path, "n1", "evict"))
    attackers = [CallPool(TLSIdentity(tmp_path, "c1", "evict")) for _ in range(SLOTS + 3)]
    stop = threading.Event()
    try:
        member = node.connection(listener)
        assert member.call("checkpoint", b"", 10.0) == b"stored"
        held = [attackers[i].connection(listener) for i in range(SLOTS - 1)]
        busy = threading.Thread(target=_keep_busy, args=(held, kind, stop))
        busy.start()
        try:
            # The member goes quiet for a while; newcomers keep coming.
            for newcomer in attackers[SLOTS - 1 :]:
                threading.Event().wait(0.5)
                with contextlib.suppress(HermesError):  # refused a slot, or the request
                    newcomer.connection(listener).call(kind, b"x", 5.0)
            assert member.closed is None, member.closed
            assert member.call("checkpoint", b"", 10.0) == b"stored"
        finally:
            stop.set()
            busy.join(30)
    finally:
        node.close()
        for each in attackers:
            each.close()


def test_a_quiet_clients_slot_still_goes_to_a_newcomer(
    tmp_path: pathlib.Path, listener: str
) -> None:
    """What the listener's slots are for: an idle client makes room for one that calls."""
    pools = [CallPool(TLSIdentity(tmp_path, "c1", "evict")) for _ in range(SLOTS + 1)]
    try:
        first = pools[0].connection(listener)
        assert first.call("echo", b"a", 10.0) == b"a"
        for pool in pools[1:SLOTS]:
            assert pool.connection(listener).call("echo", b"b", 10.0) == b"b"
        threading.Event().wait(0.5)
        assert pools[SLOTS].connection(listener).call("echo", b"new", 10.0) == b"new"
        wait_until(lambda: first.closed is not None, 10.0, "the idlest client's connection to go")
    finally:
        for pool in pools:
            pool.close()


def test_requests_a_client_may_not_make_do_not_keep_its_slots(
    tmp_path: pathlib.Path, listener: str
) -> None:
    """Every slot held by a client sending only refused requests: a member arriving
    later still gets one (the refusals are no activity: those connections are idle)."""
    attackers = [CallPool(TLSIdentity(tmp_path, "c1", "evict")) for _ in range(SLOTS)]
    node = CallPool(TLSIdentity(tmp_path, "n1", "evict"))
    stop = threading.Event()
    held = [pool.connection(listener) for pool in attackers]
    busy = threading.Thread(target=_keep_busy, args=(held, "checkpoint", stop))
    busy.start()
    try:
        threading.Event().wait(0.6)
        assert node.connection(listener).call("checkpoint", b"", 10.0) == b"stored"
    finally:
        stop.set()
        busy.join(30)
        node.close()
        for each in attackers:
            each.close()


def test_peers_that_never_finish_their_tls_handshake_cannot_hold_every_slot(
    tmp_path: pathlib.Path, listener: str
) -> None:
    """Peers that connect and send nothing (not even a TLS hello) held a slot each for
    the handshake's 5 s, not evictable: opened again and again they refused every
    caller. A newcomer now takes the slot of a handshake unfinished past the idle time."""
    host, _, port = listener.rpartition(":")
    squatters = [socket.create_connection((host, int(port)), timeout=10) for _ in range(SLOTS)]
    pool = CallPool(TLSIdentity(tmp_path, "c1", "evict"))
    try:
        threading.Event().wait(0.5)
        assert pool.connection(listener).call("echo", b"in", 10.0) == b"in"
    finally:
        pool.close()
        for sock in squatters:
            sock.close()
