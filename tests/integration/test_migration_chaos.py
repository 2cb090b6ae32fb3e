"""Kill -9 at each step of a move (docs/DESIGN.md §5): one active copy, nothing acknowledged lost.

The source node pauses its next migration at a step (a test hook), the test
kills the destination, the source or the storesite there, and then checks
that exactly one copy serves and that every acknowledged increment is in it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.roles import TEST_CERT_NAME
from hermesx.testing.clusters import wait_for_log
from hermesx.testing.moves import active_copies, move_in_background
from hermesx.testing.plugin import ClusterFactory

pytestmark = pytest.mark.integration

ACKED = 12


def _move_with_a_kill(
    cluster: LocalCluster, client: Client, wasm: pathlib.Path, name: str, step: str, victim: str
) -> tuple[str, list[str]]:
    guid = client.create(wasm, name=name, on="n1", checkpoint="every-call")
    for _ in range(ACKED):
        client.atom(name).incr(1)
    client.node_client.pause_at(client.node_member("n1"), step, 2.0)
    mover, outcome = move_in_background(client, name, "n2")
    wait_for_log(cluster, "node-n1", f"paused at {step}")
    cluster.kill(victim)
    mover.join(60)
    return guid, outcome


@pytest.fixture
def chaos(cluster_factory: ClusterFactory) -> Iterator[LocalCluster]:
    """A cluster of this test's own (it kills a part), stopped when the test ends rather
    than with the module, so six of them do not idle side by side."""
    cluster = cluster_factory(3, session_timeout=2.0)
    yield cluster
    cluster.down()


@pytest.mark.parametrize(
    ("step", "victim"),
    [
        ("prepared", "node-n2"),
        ("transferred", "node-n2"),
        ("transferred", "node-n1"),
        ("committed", "node-n1"),
        ("prepared", "storesite-s1"),
        ("committed", "storesite-s1"),
    ],
)
def test_kill_during_a_move_leaves_one_copy_with_every_acknowledged_call(
    chaos: LocalCluster, atoms: dict[str, pathlib.Path], step: str, victim: str
) -> None:
    # The test certificate: the move is paused through a test hook.
    with Client(chaos.zk, chaos.name, cert=TEST_CERT_NAME) as client:
        name = f"chaos-{step}-{victim}"
        guid, _ = _move_with_a_kill(chaos, client, atoms["counter"], name, step, victim)
        if victim.startswith("storesite"):
            chaos.start_storesite("s1")
            chaos.wait_registered()
        # The atom answers again (after recovery where a node died) with every
        # acknowledged increment, and exactly one copy serves.
        assert client.atom(name).incr(1) == ACKED + 1
        assert len(active_copies(client, guid)) == 1
        # And it can move again: no move is left half-done at the storesite.
        where = client.locate(name).node
        target = next(n for n in ("n1", "n2", "n3") if n != where and f"node-{n}" != victim)
        client.migrate(name, target)
        assert client.atom(name).get() == ACKED + 1
        assert active_copies(client, guid) == [target]
