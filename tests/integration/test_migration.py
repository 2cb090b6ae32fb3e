"""Live migration under load, and its failures (docs/DESIGN.md §5)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading

import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import HermesError, MigrationError, NameNotFoundError
from hermesx.local.cluster import LocalCluster
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration


def test_counter_under_load_moves_ten_times_and_loses_nothing(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n1")
    acknowledged = [0] * 4
    failures: list[str] = []
    results: list[set[int]] = [set() for _ in range(4)]
    stop = threading.Event()

    def load(i: int) -> None:
        with Client(cluster.zk, cluster.name) as own:
            for _ in range(100_000):  # bounded; ends when the moves are done
                if stop.is_set():
                    return
                try:
                    value = own.atom(unique_name).incr(1)
                except HermesError as exc:
                    failures.append(f"client {i}: {exc}")
                    return
                acknowledged[i] += 1
                results[i].add(value)

    workers = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    route = ["n2", "n3", "n1"] * 4
    ages = []
    try:
        for node in route[:10]:
            client.migrate(unique_name, node)
            where = client.locate(unique_name)
            assert where.node == node
            ages.append(where.age)
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    assert not failures, failures
    assert ages == sorted(ages) and len(set(ages)) == len(ages)
    total = sum(acknowledged)
    assert total > 0
    # Every acknowledged increment is in the state, none ran twice.
    assert client.atom(unique_name).get() == total
    every_value = set().union(*results)
    assert len(every_value) == total


def test_migrate_cli_prints_the_new_tad(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n1")
    env = {**os.environ, "HERMESX_ZK": cluster.zk, "HERMESX_CLUSTER": cluster.name}
    moved = subprocess.run(
        [sys.executable, "-m", "hermesx", "migrate", unique_name, "n3", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert moved.returncode == 0, moved.stderr
    data = json.loads(moved.stdout)
    assert data["node"] == "n3" and data["from"] == "n1"
    located = subprocess.run(
        [sys.executable, "-m", "hermesx", "locate", unique_name, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert json.loads(located.stdout)["node"] == "n3"
    assert json.loads(located.stdout)["age"] == data["age"]


def test_bad_migrations_are_clear_and_the_atom_keeps_serving(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n2")
    client.atom(unique_name).incr(3)
    with pytest.raises(MigrationError, match="already on node n2"):
        client.migrate(unique_name, "n2")
    with pytest.raises(NameNotFoundError, match="n9"):
        client.migrate(unique_name, "n9")
    with pytest.raises(NameNotFoundError):
        client.migrate("no-such-atom", "n1")
    assert client.atom(unique_name).incr(1) == 4
    assert client.locate(unique_name).node == "n2"


def test_concurrent_migrations_of_one_atom_leave_exactly_one_copy(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n1")
    client.atom(unique_name).incr(1)
    outcomes: list[str] = []

    def move(node: str) -> None:
        try:
            client.migrate(unique_name, node)
            outcomes.append(f"ok {node}")
        except HermesError as exc:
            outcomes.append(f"refused {node}: {exc}")

    movers = [threading.Thread(target=move, args=(n,)) for n in ("n2", "n3")]
    for m in movers:
        m.start()
    for m in movers:
        m.join(60)
    assert any(o.startswith("ok") for o in outcomes), outcomes
    where = client.locate(unique_name).node
    active = [
        n
        for n in ("n1", "n2", "n3")
        if client.node_status(n).active_atoms and _hosts(client, n, unique_name)
    ]
    assert active == [where]
    assert client.atom(unique_name).incr(1) == 2


def _hosts(client: Client, node: str, name: str) -> bool:
    from hermesx.rpc.proto import hermesx_pb2 as pb

    guid = client.guid_of(name)
    reply = client.invoker.node_stub(node).Locate(pb.LocateRequest(guid=guid), timeout=5)
    return bool(reply.active_here)


def test_move_to_syscall_moves_the_atom_with_its_state(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["mover"], name=unique_name, on="n1")
    client.atom(unique_name).bump()
    assert client.atom(unique_name).go("n3") == "n1"  # moves after the call
    wait_until(lambda: client.locate(unique_name).node == "n3", 5.0, "the atom to move to n3")
    assert client.atom(unique_name).where() == "n3"
    assert client.atom(unique_name).bump() == 2
    assert codec.unpack(client.invoke(unique_name, "where", codec.pack(None)).result) == "n3"


def test_follow_caller_placement_moves_an_atom_to_the_node_that_calls_it(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    target = f"{unique_name}-target"
    client.create(atoms["counter"], name=target, on="n3", placement="follow-caller")
    client.create(atoms["caller"], name=unique_name, on="n1")
    for i in range(25):
        assert client.atom(unique_name).call([target, "incr", 1]) == i + 1
    # The move happens right after the deciding call.
    wait_until(lambda: client.locate(target).node == "n1", 5.0, "the target to follow to n1")
    assert client.locate(target).node == "n1"
    assert client.atom(target).get() == 25


def test_an_unknown_placement_policy_is_refused(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    with pytest.raises(HermesError, match="placement"):
        client.create(atoms["counter"], name=unique_name, placement="random-walk")
