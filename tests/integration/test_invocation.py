"""Location-independent invocation across real node processes (docs/DESIGN.md §4)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Sequence

import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import (
    MethodError,
    NameNotFoundError,
    NameTakenError,
    PayloadTooLargeError,
    UnreachableError,
)
from hermesx.core.identity import TAD
from hermesx.core.types import Hop
from hermesx.local.cluster import LocalCluster

pytestmark = pytest.mark.integration


def _events(trace: Sequence[Hop]) -> list[tuple[str, str]]:
    return [(h.node, h.event) for h in trace]


def test_client_invokes_by_name_without_knowing_the_node(
    cluster: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    with Client(cluster.zk, cluster.name) as creator:
        creator.create(atoms["counter"], name=unique_name, on="n1")
    # A fresh client: it was never told where the atom is.
    with Client(cluster.zk, cluster.name) as client:
        assert client.atom(unique_name).incr(5) == 5
        assert client.atom(unique_name).incr(2) == 7
        assert client.atom(unique_name).get() == 7
        assert client.locate(unique_name).node == "n1"


def test_stale_stash_is_answered_by_forwarding_and_every_node_on_the_path_learns(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    guid = client.create(atoms["counter"], name=unique_name, on="n1")
    client.atom(unique_name).incr(1)
    client.migrate(unique_name, "n2")
    client.migrate(unique_name, "n3")
    newest = client.locate(unique_name)
    assert newest.node == "n3"
    # n1 still points at n2, which points at n3: a chain of two forwards.
    assert client.stash_of("n1", guid) == TAD("n2", newest.age - 1)
    outcome = client.invoke(unique_name, "incr", codec.pack(1), via="n1", trace=True)
    assert codec.unpack(outcome.result) == 2
    events = _events(outcome.trace)
    assert ("n1", "forward") in events and ("n2", "forward") in events and ("n3", "ran") in events
    assert client.stash_of("n1", guid) == TAD("n3", newest.age)
    assert client.stash_of("n2", guid) == TAD("n3", newest.age)


def test_chain_longer_than_the_hop_limit_gives_moved_and_the_call_completes(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n1")
    client.migrate(unique_name, "n2")
    client.migrate(unique_name, "n3")
    with Client(cluster.zk, cluster.name, hop_limit=1) as short:
        outcome = short.invoke(unique_name, "incr", codec.pack(3), via="n1", trace=True)
    assert codec.unpack(outcome.result) == 3
    events = _events(outcome.trace)
    assert ("n2", "moved") in events, events
    assert events[-1] == ("n3", "ran")


def test_a_retried_request_id_does_not_run_twice(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n2")
    first = client.invoke(unique_name, "incr", codec.pack(10), request_id="req-1")
    again = client.invoke(unique_name, "incr", codec.pack(10), request_id="req-1")
    assert codec.unpack(first.result) == codec.unpack(again.result) == 10
    # The reply table moves with the atom.
    client.migrate(unique_name, "n3")
    after_move = client.invoke(unique_name, "incr", codec.pack(10), request_id="req-1")
    assert codec.unpack(after_move.result) == 10
    assert client.atom(unique_name).get() == 10


def test_the_proxy_and_the_cli_retry_by_request_id(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n1")
    request_id = client.invoker.request_ids.next()
    retry = client.atom(unique_name, request_id=request_id)
    assert retry.incr(4) == 4
    assert retry.incr(4) == 4
    env = {**os.environ, "HERMESX_ZK": cluster.zk, "HERMESX_CLUSTER": cluster.name}
    argv = [sys.executable, "-m", "hermesx", "invoke", unique_name, "incr", "4", "--json"]
    for _ in range(2):
        proc = subprocess.run(
            [*argv, "--request-id", request_id], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["result"] == 4
    assert client.atom(unique_name).incr(1) == 5


def test_atom_invokes_another_atom_by_name_across_nodes(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    target = f"{unique_name}-target"
    client.create(atoms["counter"], name=target, on="n3")
    client.create(atoms["caller"], name=unique_name, on="n1")
    assert client.atom(unique_name).call([target, "incr", 4]) == 4
    assert client.atom(target).get() == 4


def test_a_thousand_sends_arrive_in_order(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    inbox = f"{unique_name}-inbox"
    client.create(atoms["inbox"], name=inbox, on="n3")
    client.create(atoms["caller"], name=unique_name, on="n1")
    client.atom(unique_name).send_many([inbox, 1, 1000])
    assert client.atom(inbox).received() == list(range(1000))


def test_unknown_name_and_unknown_method_are_clear_and_the_node_keeps_serving(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n1")
    with pytest.raises(NameNotFoundError, match="no-such-atom"):
        client.atom("no-such-atom").incr(1)
    with pytest.raises(MethodError, match="frobnicate"):
        client.atom(unique_name).frobnicate(1)
    assert client.atom(unique_name).incr(1) == 1


def test_names_are_unique(client: Client, atoms: dict[str, pathlib.Path], unique_name: str) -> None:
    client.create(atoms["counter"], name=unique_name, on="n1")
    with pytest.raises(NameTakenError):
        client.create(atoms["counter"], name=unique_name, on="n2")
    assert client.atom(unique_name).incr(1) == 1


def test_payload_over_the_limit_is_refused_and_the_atom_keeps_working(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["echo"], name=unique_name, on="n2")
    with pytest.raises(PayloadTooLargeError):
        client.atom(unique_name).echo("x" * (5 * 2**20))
    assert client.atom(unique_name).echo("small") == "small"


def test_guid_of_a_storesite_that_does_not_exist(client: Client) -> None:
    with pytest.raises(UnreachableError, match="nosuchsite"):
        client.invoke("nosuchsite:" + "0" * 32, "get", codec.pack(None))


def test_unknown_node_is_a_clear_error(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    with pytest.raises(UnreachableError, match="n9"):
        client.create(atoms["counter"], name=unique_name, on="n9")


def test_a_forwarding_loop_is_broken_through_the_storesite(
    client: Client, tester: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    guid = client.create(atoms["counter"], name=unique_name, on="n3")
    # Hostile stashes: n1 -> n2 -> n1, both claiming to be newer than the truth.
    tester.node_client.stash_put(tester.node_member("n1"), guid, TAD("n2", 50))
    tester.node_client.stash_put(tester.node_member("n2"), guid, TAD("n1", 51))
    outcome = client.invoke(guid, "incr", codec.pack(1), via="n1", trace=True)
    assert codec.unpack(outcome.result) == 1
    events = _events(outcome.trace)
    assert any(event == "storesite" for _, event in events), events
    assert events[-1] == ("n3", "ran")


def test_entering_at_a_node_that_is_not_live_is_a_clear_error(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    client.create(atoms["counter"], name=unique_name, on="n1")
    with pytest.raises(NameNotFoundError, match="n9"):
        client.invoke(unique_name, "incr", codec.pack(1), via="n9")
    assert client.atom(unique_name).get() == 0


def test_a_call_cycle_back_into_an_atom_fails_fast_with_a_clear_error(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    first, second = f"{unique_name}-a", f"{unique_name}-b"
    client.create(atoms["caller"], name=first, on="n1")
    client.create(atoms["caller"], name=second, on="n2")
    # first -> second -> first: the inner call would wait forever for first to be free.
    with pytest.raises(MethodError, match="call cycle"):
        client.atom(first).call([second, "call", [first, "lookup", [0, "", "x"]]])
    # Both atoms keep serving.
    assert client.atom(second).lookup([0, "", unique_name]) == []
    assert client.atom(first).lookup([0, "", first]) == [client.guid_of(first)]
