"""A node's checkpoints sent together are committed together (docs/DESIGN.md §4.1, §6).

A node says, with each checkpoint on the storesite's call channel, whether it
has others in flight; the storesite runs a lone one on its connection's own
thread (no hand-off) and the others on its workers, so that its connection
is read on and what arrives together is committed together. What a caller
would notice if that went wrong: calls on many atoms serialized behind one
another's syncs, or a lone durable call paying for a hand-off.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import pytest

from hermesx.core.identity import TAD
from hermesx.rpc.callclient import CallPool
from hermesx.rpc.callserver import Call, CallServer
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.storesite_client import (
    CHECKPOINT_DELTA,
    MORE_CHECKPOINTS,
    CheckedSnapshot,
    StoresiteClient,
)
from hermesx.rpc.wire import ChannelPool
from hermesx.testing.wait import wait_until
from storesite.calls import lone_checkpoint


@contextmanager
def held_delta_site(
    workers: int, seen: Callable[[Call], object]
) -> Iterator[tuple[StoresiteClient, threading.Event]]:
    """A client of a storesite whose call channel takes single checkpoint deltas
    only: each is shown to ``seen``, then held until the event is set, then
    acknowledged with checksum 7. Everything is stopped on the way out."""
    release = threading.Event()
    served = CallServer("storesite", workers=workers, tls=None)

    def delta(call: Call) -> bytes:
        seen(call)
        release.wait(10)
        return pb.CheckpointAck(stored=True, checksum=7).SerializeToString()

    served.register(CHECKPOINT_DELTA, delta, "Storesite/PutCheckpointDelta")
    channels = ChannelPool()
    try:
        site = StoresiteClient(
            "127.0.0.1:1", sid="s1", channels=channels, call=served.start("127.0.0.1:0")
        )
        yield site, release
    finally:
        release.set()
        channels.close()
        served.stop()


def test_a_checkpoint_sent_while_another_is_in_flight_says_so() -> None:
    seen: list[Mapping[str, str] | None] = []
    with held_delta_site(4, lambda call: seen.append(call.meta)) as (site, release):
        state = CheckedSnapshot(b"delta", 1, 1)

        def send() -> None:
            assert site.send_delta("g", TAD("n1", 1), state, 2, (1, 5)).checksum == 7

        first = threading.Thread(target=send)
        first.start()
        wait_until(lambda: len(seen) == 1, timeout=5, what="the first checkpoint")
        second = threading.Thread(target=send)
        second.start()
        wait_until(lambda: len(seen) == 2, timeout=5, what="the second checkpoint")
        release.set()
        first.join(10)
        second.join(10)
        # Alone, then one sent while the first was in flight; then alone again.
        assert seen[0] is None or MORE_CHECKPOINTS not in seen[0]
        assert seen[1] is not None and seen[1].get(MORE_CHECKPOINTS)
        send()
        assert seen[2] is None or MORE_CHECKPOINTS not in seen[2]


@pytest.fixture
def address() -> Iterator[str]:
    served = CallServer("storesite", workers=4, tls=None)
    served.register(
        "where",
        lambda call: threading.current_thread().name.encode(),
        "Storesite/PutCheckpoint",
        inline=lone_checkpoint,
    )
    yield served.start("127.0.0.1:0")
    served.stop()


def test_only_a_lone_checkpoint_runs_on_its_connections_thread(address: str) -> None:
    pool = CallPool()
    try:
        connection = pool.connection(address)
        assert connection.call("where", b"", 5.0).startswith(b"call-link")
        more = {MORE_CHECKPOINTS: "1"}
        assert not connection.call("where", b"", 5.0, more).startswith(b"call-link")
    finally:
        pool.close()
