"""Damage inside a chain of delta records, found at recovery, real processes (docs/DESIGN.md §6).

A bit flipped on disk in an older delta record of an atom's chain — not the
latest, so no delta on it looks at it — damages every kept checkpoint
composed through it. When the node holding the atom dies, recovery must
never restore a state short of the acknowledged calls: the call fails with
a CheckpointDamagedError naming the atom and the damaged record, and no
node serves the atom.
"""

from __future__ import annotations

import pathlib

import pytest
from faultkit import ClusterStarter, counter_cluster
from test_checkpoint_faults import _damaged_after

from hermesx.core import codec
from hermesx.core.errors import CheckpointDamagedError
from hermesx.rpc.proto import hermesx_pb2 as pb


def test_a_flipped_bit_in_an_older_record_of_the_chain_fails_recovery_naming_the_atom(
    start_cluster: ClusterStarter, atoms: dict[str, pathlib.Path]
) -> None:
    with counter_cluster(start_cluster, atoms["counter"]) as (cluster, client):
        # Slots 2..13 are deltas on slot 1; slot 5 is composed into every kept one (10..13).
        guid = _damaged_after(cluster, client, 12, 5)
        cluster.kill("node-n1")
        with pytest.raises(CheckpointDamagedError) as info:
            client.invoke("c", "get", codec.pack(None), timeout=30)
        message = str(info.value)
        assert f"checkpoint #5 of atom {guid}" in message and "is damaged" in message, message
        assert f"no good checkpoint of atom {guid} is kept, so it is not restored" in message
        assert (
            not client.invoker.node_stub("n2")
            .Locate(pb.LocateRequest(guid=guid), timeout=5)
            .active_here
        )
