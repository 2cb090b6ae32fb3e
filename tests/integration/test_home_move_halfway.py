"""A home move that stopped half way never makes a second serving copy (docs/DESIGN.md §6).

The other storesite adopted the atom (its AdoptAtom done) but the atom's
home never recorded the move in the name service — its answer lost, or the
home killed right after. When the atom's node then dies, only the home the
name service names recovers it: before, the other storesite recovered it
too, from the checkpoint it had adopted, and two copies served (the
increments acknowledged since, missing from one). The move can then be
made again.
"""

from __future__ import annotations

import pathlib

import pytest

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.storesite_client import StoresiteClient
from hermesx.testing.clusters import part_log
from hermesx.testing.moves import active_copies
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration


def _adopt_without_the_move(cluster: LocalCluster, guid: str, other: str) -> None:
    """What the home's move_home to ``other`` does up to its AdoptAtom, and no further."""
    with Client(cluster.zk, cluster.name, cert="n2") as as_node:
        sid, address = as_node.invoker.storesite_address(guid)
        home = StoresiteClient(address, sid=sid, channels=as_node.channels)
        data = home.get_checkpoint(guid)
    with Client(cluster.zk, cluster.name, cert=sid) as as_storesite:
        member = as_storesite.naming.storesites()[other]
        peer = StoresiteClient(member.address, sid=other, channels=as_storesite.channels)
        peer.adopt_atom(data)


def test_an_adoption_the_old_home_never_recorded_is_not_recovered_and_the_move_is_retried(
    cluster_factory: ClusterFactory, atoms: dict[str, pathlib.Path]
) -> None:
    cluster = cluster_factory(["n1", "n2"], session_timeout=2.0, storesites=("s1", "s2"))
    with Client(cluster.zk, cluster.name) as client:
        guid = client.create(atoms["counter"], name="half", on="n1", checkpoint="every-call")
        for _ in range(3):
            client.atom("half").incr(1)
        other = "s2" if guid.startswith("s1:") else "s1"
        _adopt_without_the_move(cluster, guid, other)
        # Acknowledged after the adoption: written at the home the name service names.
        for _ in range(2):
            client.atom("half").incr(1)

        cluster.kill("node-n1")
        settled = wait_until(
            lambda: next(
                (
                    said
                    for said in ("not recovered here", f"recovered atom {guid}")
                    if said in part_log(cluster, f"storesite-{other}")
                ),
                None,
            ),
            30.0,
            f"storesite {other} to settle the death of the atom's node",
        )
        assert settled == "not recovered here"
        # One copy, with every acknowledged increment (not the adopted checkpoint's 3).
        assert client.atom("half").get() == 5
        assert active_copies(client, guid) == ["n2"]

        client.move_home("half", other)
        assert client.atom("half").incr(1) == 6
    with Client(cluster.zk, cluster.name) as fresh:
        assert fresh.locate("half").node == "n2"
        assert fresh.atom("half").get() == 6
        assert active_copies(fresh, guid) == ["n2"]
