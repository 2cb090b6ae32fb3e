"""Locations name a node incarnation (docs/DESIGN.md §5, §6): restarts never strand an atom.

A node killed with -9 and started again under its name, data dir and address
is another incarnation. Its atoms at the old one are recovered whether the
storesite saw the restart or was down meanwhile, and a move whose destination
restarted after staging is refused at COMMIT and stays at its source. Real
processes, a real ZooKeeper, kill -9.
"""

from __future__ import annotations

import pathlib
import socket
import time

import pytest

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster, NodeSpec, alive
from hermesx.rpc.roles import TEST_CERT_NAME
from hermesx.testing.clusters import wait_for_log
from hermesx.testing.moves import active_copies, move_in_background
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration

ACKED = 12
SESSION_TIMEOUT = 2.0


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _incarnation(client: Client, node: str) -> str:
    member = client.nodes().get(node)
    return member.incarnation if member is not None else ""


def _restart(cluster: LocalCluster, spec: NodeSpec) -> None:
    """kill -9 the node and start it again: same name, data dir and address."""
    cluster.kill(f"node-{spec.name}")
    cluster.start_node(spec)
    cluster.wait_registered(nodes=[spec.name])


@pytest.fixture(scope="module")
def pinned_cluster(cluster_factory: object) -> LocalCluster:
    """n1, n2, n3, each on an address it keeps across restarts, shared by the module."""
    specs = [NodeSpec(f"n{i}", listen=_free_address()) for i in (1, 2, 3)]
    return cluster_factory(specs, session_timeout=SESSION_TIMEOUT)  # type: ignore[operator, no-any-return]


@pytest.fixture
def pinned(pinned_cluster: LocalCluster) -> LocalCluster:
    """The module's cluster with every part running: each test restarts what it stops,
    and a part a failed test left stopped is started again here. Atom names are the
    tests' own."""
    cluster = pinned_cluster
    for part, pid in list(cluster.procs.items()):
        if alive(pid):
            continue
        kind, name = part.split("-", 1)
        if kind == "node":
            cluster.start_node(cluster.node_specs[name])
        elif kind == "storesite":
            cluster.start_storesite(name)
    cluster.wait_registered()
    return cluster


def _counter(client: Client, wasm: pathlib.Path, name: str, on: str) -> str:
    guid = client.create(wasm, name=name, on=on, checkpoint="every-call")
    for _ in range(ACKED):
        client.atom(name).incr(1)
    return guid


def test_node_restarted_while_the_storesite_was_down_gets_its_atom_recovered(
    pinned: LocalCluster, atoms: dict[str, pathlib.Path]
) -> None:
    with Client(pinned.zk, pinned.name) as client:
        guid = _counter(client, atoms["counter"], "overlap", on="n1")
        before = _incarnation(client, "n1")
        pinned.kill("storesite-s1")
        _restart(pinned, pinned.node_specs["n1"])
        wait_until(
            lambda: _incarnation(client, "n1") not in ("", before), 30.0, "n1's new incarnation"
        )
        pinned.start_storesite("s1")
        pinned.wait_registered()
        # The storesite reconciled its record with the live incarnation: the
        # atom is back with every acknowledged increment, in one copy.
        assert client.atom("overlap").incr(1) == ACKED + 1
        assert len(active_copies(client, guid)) == 1
        assert client.locate("overlap").age > 1


def test_restarted_node_atoms_are_recovered_by_a_storesite_up_all_along(
    pinned: LocalCluster, atoms: dict[str, pathlib.Path]
) -> None:
    with Client(pinned.zk, pinned.name) as client:
        guid = _counter(client, atoms["counter"], "steady", on="n2")
        _restart(pinned, pinned.node_specs["n2"])
        assert client.atom("steady").incr(1) == ACKED + 1
        assert len(active_copies(client, guid)) == 1
        assert client.locate("steady").age > 1


def test_restarted_storesite_leaves_atoms_with_their_live_incarnations(
    pinned: LocalCluster, atoms: dict[str, pathlib.Path]
) -> None:
    with Client(pinned.zk, pinned.name) as client:
        guids = {n: _counter(client, atoms["counter"], f"stay-{n}", on=n) for n in ("n1", "n2")}
        pinned.kill("storesite-s1")
        pinned.start_storesite("s1")
        pinned.wait_registered()
        time.sleep(1.0)  # a deliberate window in which a wrong recovery at start would show
        # Their nodes never restarted: no atom is recovered, none moves.
        for node, guid in guids.items():
            where = client.locate(f"stay-{node}")
            assert (where.node, where.age) == (node, 1)
            assert active_copies(client, guid) == [node]
            assert client.atom(f"stay-{node}").incr(1) == ACKED + 1


@pytest.mark.parametrize("step", ["prepared", "transferred", "committed"])
def test_destination_restarted_during_a_move_leaves_one_copy_with_every_acknowledged_call(
    pinned: LocalCluster, atoms: dict[str, pathlib.Path], step: str
) -> None:
    # The test certificate: it may also call the test hooks.
    with Client(pinned.zk, pinned.name, cert=TEST_CERT_NAME) as client:
        name = f"mover-{step}"
        guid = _counter(client, atoms["counter"], name, on="n1")
        # Long enough for n2's old session to expire and the new process to
        # register before the source goes on with the move (ended early where that is safe).
        pause = 12.0
        client.node_client.pause_at(client.node_member("n1"), step, pause)
        mover, outcome = move_in_background(client, name, "n2")
        wait_for_log(pinned, "node-n1", f"paused at {step}")
        paused_at = time.monotonic()
        _restart(pinned, pinned.node_specs["n2"])
        assert time.monotonic() - paused_at < pause, "n2 came back too late for this test"
        if step != "transferred":
            # n2 is back: the source goes on now. After "transferred" the COMMIT
            # that follows is judged on the storesite's cached membership, which
            # may lag ZooKeeper a little: that step keeps its whole pause.
            client.node_client.pause_at(client.node_member("n1"), step, 0.0)
        mover.join(60)
        [result] = outcome
        if step == "prepared":
            # The new incarnation staged the copy itself: the move is sound.
            assert result == "moved"
        elif step == "transferred":
            # The COMMIT named the incarnation that staged, which is gone: refused,
            # and the atom stays at its source.
            assert result.startswith("failed:") and "restarted" in result, result
            assert client.locate(name).node == "n1"
        else:
            # Committed, then the destination lost its copy: a clear failure,
            # and the storesite recovers the atom from the committed checkpoint.
            assert result.startswith("failed:") and "did not activate" in result, result
        # Every acknowledged increment is there, in exactly one copy.
        assert client.atom(name).incr(1) == ACKED + 1
        [where] = active_copies(client, guid)
        assert client.locate(name).node == where
        # And nothing is left half-done: the atom moves again.
        target = next(n for n in ("n1", "n2", "n3") if n != where)
        client.migrate(name, target)
        assert client.atom(name).get() == ACKED + 1
        assert active_copies(client, guid) == [target]
