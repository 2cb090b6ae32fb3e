"""A node's budget of atoms: one client creating atoms cannot take a node's memory.

Any role may create atoms, each allowed to grow to its memory cap (64 MiB);
nothing bounded a node's total but ``vm.max_map_count``. A node now holds at
most ``--max-atoms`` atoms whose caps add up to at most ``--max-atom-memory``
(docs/DESIGN.md §3): a create or a move past either is refused at once with
``capacity``, one line naming the node, what is full and the numbers, and
nothing is left behind. A dormant atom goes to a node with room; a recovered
one finds a home even when every node is full (docs/DESIGN.md §6). One
cluster for the module (2 s sessions): n1 holds 2 atoms at most, n2's caps
may add up to 128 MiB (two atoms), n3 has the defaults; the last test kills n3.
"""

from __future__ import annotations

import json
import pathlib
import signal
import uuid
from collections.abc import Iterator

import pytest

from hermesx.client import Client
from hermesx.core.errors import CapacityError
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.rpc.storesite_client import StoresiteClient
from hermesx.testing.cli import cluster_env, run_hermesx
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def budgeted(cluster_factory: object) -> LocalCluster:
    specs = [
        NodeSpec("n1", options=("--max-atoms", "2")),
        NodeSpec("n2", options=("--max-atom-memory", "128MiB")),
        NodeSpec("n3"),
    ]
    return cluster_factory(specs, session_timeout=2.0)  # type: ignore[operator,no-any-return]


@pytest.fixture(scope="module")
def full(budgeted: LocalCluster, atoms: dict[str, pathlib.Path]) -> dict[str, list[str]]:
    """n1 and n2 full (two counters each); n3 holds three, more than either."""
    with Client(budgeted.zk, budgeted.name) as client:
        return {
            node: [
                client.create(atoms["counter"], name=f"{node}-held-{i}", on=node)
                for i in range(count)
            ]
            for node, count in (("n1", 2), ("n2", 2), ("n3", 3))
        }


@pytest.fixture
def client(budgeted: LocalCluster) -> Iterator[Client]:
    with Client(budgeted.zk, budgeted.name) as c:
        yield c


def _records(client: Client) -> int:
    """Atoms the storesite has records of."""
    address = client.naming.storesites()["s1"].address
    with StoresiteClient(address, sid="s1", channels=client.channels) as site:
        return site.status().atoms


def test_a_create_past_the_budget_is_refused_at_once_and_leaves_nothing(
    client: Client, full: dict[str, list[str]], atoms: dict[str, pathlib.Path]
) -> None:
    records = _records(client)
    name = f"past-{uuid.uuid4().hex[:8]}"
    with pytest.raises(CapacityError) as by_count:
        client.create(atoms["counter"], name=name, on="n1", aliases=["budget=past"])
    assert "node n1 holds 2 atoms, its most (max_atoms 2)" in str(by_count.value)
    with pytest.raises(CapacityError) as by_memory:
        client.create(atoms["counter"], name=name, on="n2")
    message = str(by_memory.value)
    assert "node n2 holds 2 atoms of 64 MiB each (128 MiB)" in message
    assert "its most of 128 MiB (max_atom_memory)" in message
    for refused in (by_count.value, by_memory.value):
        assert "\n" not in str(refused)
    # No name, no alias, no storesite record: the name is free for a retry.
    assert name not in client.names()
    assert client.lookup("past", scope="budget") == []
    assert _records(client) == records
    # The full nodes keep serving their atoms.
    for guid in full["n1"] + full["n2"]:
        assert client.atom(guid).incr(1) >= 1
    assert client.node_status("n1").atom_room == 0


def test_a_create_without_a_node_goes_where_there_is_room(
    client: Client, full: dict[str, list[str]], atoms: dict[str, pathlib.Path]
) -> None:
    # n1 and n2 hold fewer atoms than n3, but they are full.
    guid = client.create(atoms["counter"], name=f"anywhere-{uuid.uuid4().hex[:8]}")
    assert client.locate(guid).node == "n3"
    client.atom(guid).incr(1)


def test_a_move_onto_a_full_node_is_refused_and_the_atom_keeps_answering_on_its_source(
    client: Client, full: dict[str, list[str]]
) -> None:
    guid = full["n3"][0]
    before = client.atom(guid).get()
    with pytest.raises(CapacityError, match="node n1 holds 2 atoms, its most"):
        client.migrate(guid, "n1")
    assert client.locate(guid).node == "n3"
    assert client.atom(guid).incr(1) == before + 1
    assert client.node_status("n1").active_atoms == 2


def test_the_cli_create_past_the_budget_prints_one_line_and_fails(
    budgeted: LocalCluster, full: dict[str, list[str]], atoms: dict[str, pathlib.Path]
) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    argv = ["create", str(atoms["counter"]), "--name", name, "--on", "n1"]
    done = run_hermesx(cluster_env(budgeted), *argv, "--json")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: node n1 holds 2 atoms, its most (max_atoms 2)"), lines
    assert json.loads(done.stdout)["kind"] == "capacity"


def test_a_dormant_atom_wakes_on_a_node_with_room(
    client: Client, full: dict[str, list[str]]
) -> None:
    # n1 and n2 are the least loaded, but full: the storesite places it on n3.
    guid = full["n3"][1]
    before = client.atom(guid).get()
    client.passivate(guid)
    assert client.atom(guid).incr(1) == before + 1
    assert client.locate(guid).node == "n3"
    assert [client.node_status(n).active_atoms for n in ("n1", "n2")] == [2, 2]


def test_recovery_onto_full_nodes_passes_their_budget_and_loses_no_atom(
    budgeted: LocalCluster,
    client: Client,
    full: dict[str, list[str]],
    atoms: dict[str, pathlib.Path],
) -> None:
    """Runs last: it kills n3, and every node left is full."""
    recovered = full["n3"]
    values = {guid: client.atom(guid).get() for guid in recovered}
    budgeted.kill("node-n3", signal.SIGKILL)
    wait_until(lambda: "n3" not in client.nodes(), 30, "n3 leaves the name service")
    for guid, value in values.items():
        assert client.atom(guid).get() == value  # recovered from its checkpoint
        assert client.locate(guid).node in ("n1", "n2")
    held = [client.node_status(n).active_atoms for n in ("n1", "n2")]
    assert sum(held) >= 4 + len(recovered), held  # past 2 + 2
    # Past their budget, the nodes still refuse new atoms.
    with pytest.raises(CapacityError, match="its most"):
        client.create(atoms["counter"], on="n1")
