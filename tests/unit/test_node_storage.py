"""A node's writes follow an atom's home when it moves to another storesite (docs/DESIGN.md §6).

Two small storesite servicers over real gRPC on 127.0.0.1: the old home takes
a whole call and refuses it because the atom's records moved; the node then
makes the call again at the new home, a large state in fresh pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import pytest

from hermesx.core.errors import HomeMovedError
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import snapshot_checksum
from hermesx.node.storage import AtomStoresites
from hermesx.routing.naming import Member
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.status import abort_with
from hermesx.rpc.wire import ChannelPool


class FakeStoresite(pbg.StoresiteServicer):
    """Joins checkpoints sent in pieces; with ``move_home`` set, it reads a whole
    call, calls ``move_home`` (the name service learns the new home) and refuses."""

    def __init__(self, move_home: Callable[[str], None] | None = None) -> None:
        self.move_home = move_home
        self.heads: list[pb.CheckpointRequest] = []
        self.states: list[bytes] = []

    def PutCheckpointPieces(
        self, request_iterator: Iterator[pb.CheckpointPiece], context: grpc.ServicerContext
    ) -> pb.Empty:
        pieces = list(request_iterator)
        if self.move_home is not None:
            self.move_home(pieces[0].head.guid)
            abort_with(context, HomeMovedError("the atom's records moved to storesite s2"))
        self.heads.append(pieces[0].head)
        self.states.append(b"".join(p.data for p in pieces[1:]))
        return pb.Empty()


@dataclass
class Directory:
    """The name service as the node sees it: live storesites and atoms' homes."""

    addresses: dict[str, str]
    homes: dict[str, str] = field(default_factory=dict)
    channels: ChannelPool = field(default_factory=ChannelPool)  # the node's, as its invoker has

    def home(self, guid: str) -> str | None:
        return self.homes.get(guid)

    def storesite_member(self, guid: str) -> tuple[str, Member]:
        sid = self.home(guid) or GUID.parse(guid).home
        return sid, Member(sid, self.addresses[sid])

    def storesites(self) -> dict[str, object]:
        """Records without a call channel: these fake storesites serve gRPC only."""
        return {}


@pytest.fixture
def storesites() -> Iterator[tuple[FakeStoresite, FakeStoresite, Directory]]:
    directory = Directory({})
    old = FakeStoresite(move_home=lambda guid: directory.homes.__setitem__(guid, "s2"))
    new = FakeStoresite()
    servers = []
    for sid, servicer in (("s1", old), ("s2", new)):
        server = grpc.server(futures.ThreadPoolExecutor(2))
        pbg.add_StoresiteServicer_to_server(servicer, server)
        directory.addresses[sid] = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        server.start()
        servers.append(server)
    yield old, new, directory
    directory.channels.close()
    for server in servers:
        server.stop(None)


def test_a_large_checkpoint_refused_by_a_moved_home_is_sent_whole_to_the_new_home(
    storesites: tuple[FakeStoresite, FakeStoresite, Directory],
) -> None:
    old, new, directory = storesites
    assert old.move_home is not None  # s1 refuses: the atom's home moved to s2
    guid = str(GUID.new("s1"))
    sites = AtomStoresites(cast(Any, directory), cast(Any, directory))
    state = bytes(range(256)) * (3 * 2**20 // 256 + 7)  # in pieces: over two of them
    try:
        sites.put_checkpoint(guid, TAD("n1", 2), state, 5, generation=9, periodic=False)
    finally:
        sites.close()
    assert new.states == [state]
    head = new.heads[0]
    assert (head.guid, head.tad.node, head.tad.age, head.seq) == (guid, "n1", 2, 5)
    assert head.checksum == snapshot_checksum(state)
    assert head.generation == 9
