"""A node never restores a snapshot whose checksum does not match (docs/DESIGN.md §6, issue 11)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from wat.runtime_helpers import example

from hermesx.core.errors import StorageError
from hermesx.core.identity import GUID
from hermesx.core.snapshot import snapshot_checksum
from hermesx.node.config import NodeConfig
from hermesx.node.supervisor import Supervisor
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost


@pytest.fixture
def node() -> Iterator[Supervisor]:
    # Never started: nothing here needs ZooKeeper, a storesite or a port.
    supervisor = Supervisor(NodeConfig(name="n1", zk="127.0.0.1:1"))
    supervisor.fencing.incarnation = "1-test"  # as if registered: a node takes atoms only then
    yield supervisor
    supervisor.stop()


def test_a_damaged_snapshot_sent_for_activation_is_refused_and_nothing_runs(
    node: Supervisor,
) -> None:
    guid = str(GUID.new("s1"))
    runtime = Runtime()
    try:
        module = runtime.load(example("counter"))
        snapshot = runtime.create(module, guid, StandaloneHost()).snapshot()
    finally:
        runtime.close()
    damaged = bytearray(snapshot)
    damaged[len(damaged) // 2] ^= 0x08
    for commit in (True, False):  # activation / recovery, and a move's staged copy
        request = pb.CopyRequest(
            guid=guid,
            tad=pb.TAD(node="n1", age=3),
            snapshot=bytes(damaged),
            meta=pb.AtomMeta(module_hash=module.hash),
            checksum=snapshot_checksum(snapshot),
        )
        with pytest.raises(StorageError) as info:
            node.destination.accept(request, commit=commit)
        assert str(info.value).startswith(
            f"snapshot of atom {guid} sent to node n1 for n1@3 is damaged: its "
        )
    assert guid not in node.catalog.atoms
