"""Home moves that stop half way never leave two serving copies (docs/DESIGN.md §6).

A home move (``Storesite.move_home``) is: the new home adopts the atom, the
name service names it, the old home keeps a forwarding record. These tests
stop it after each step — the adopting storesite's answer lost, the old home
dead before it forwards — and then kill the atom's node: only the storesite
the name service names recovers it. Two real storesites over gRPC; the name
service and the nodes are the in-memory fakes of ``test_storesite_server``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from test_storesite_server import Cluster, register

from hermesx.core.errors import NamingError
from hermesx.core.identity import TAD
from hermesx.rpc.storesite_client import StoresiteClient
from hermesx.testing.wait import wait_until
from storesite.service import Storesite

WAIT = 6.0  # above Recovery's RECHECK_S (2 s)


@pytest.fixture
def fakes(tmp_path: pathlib.Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def _activations(cluster: Cluster) -> int:
    return sum(len(node.activations) for node in cluster.nodes.values())


def _two_storesites(cluster: Cluster) -> tuple[Storesite, Storesite, StoresiteClient, str]:
    cluster.add_node("doomed")
    cluster.add_node("survivor")
    old, old_client = cluster.add_storesite("s1")
    new, _ = cluster.add_storesite("s2")
    for site in (old, new):
        site.on_nodes(cluster.directory.nodes())
    guid = register(old_client, "doomed")
    old_client.put_checkpoint(guid, TAD("doomed", 1), b"acknowledged", seq=1)
    return old, new, old_client, guid


def _kill_doomed(cluster: Cluster, *sites: Storesite) -> None:
    cluster.kill_node("doomed")
    for site in sites:
        site.on_nodes(cluster.directory.nodes())


def test_lost_adopt_answer_leaves_the_old_home_alone_serving_and_the_move_retryable(
    fakes: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new, old_client, guid = _two_storesites(fakes)
    # The new home adopted, but the name service write never happened (the
    # mover lost the adopt answer, or died right after it).
    monkeypatch.setattr(
        fakes.directory, "set_home", lambda g, s: (_ for _ in ()).throw(NamingError("cut"))
    )
    with pytest.raises(NamingError):
        old.move_home(guid, "s2")
    monkeypatch.undo()
    # A later checkpoint goes to the home the name service names: the old one.
    old_client.put_checkpoint(guid, TAD("doomed", 1), b"newer", seq=2)

    _kill_doomed(fakes, old, new)
    wait_until(lambda: _activations(fakes) >= 1, WAIT, "a recovery")
    wait_until(
        lambda: old.store.get(guid).location.node == "survivor",
        WAIT,
        "the recorded location",
    )
    [request] = fakes.nodes["survivor"].activations
    assert request.snapshot == b"newer"
    assert new.store.get(guid).location == TAD("doomed", 1)
    assert new.locate(guid).forwarded_to == "s1"

    # The move can be made again: the adoption that never became home is replaced.
    old.move_home(guid, "s2")
    assert fakes.directory.homes[guid] == "s2"
    assert new.store.latest_checkpoint(guid).snapshot == b"newer"
    assert new.locate(guid).tad == old.store.get(guid).location
    assert _activations(fakes) == 1


def test_old_home_dead_before_forwarding_leaves_the_new_home_alone_serving(
    fakes: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new, _, guid = _two_storesites(fakes)

    def dies(guid: str, storesite: str) -> None:
        raise SystemError("the old home died before it forwarded")

    monkeypatch.setattr(old.store.moves, "set_forwarded", dies)
    with pytest.raises(SystemError):
        old.move_home(guid, "s2")
    assert fakes.directory.homes[guid] == "s2"
    assert not old.store.get(guid).forwarded_to

    _kill_doomed(fakes, old, new)
    wait_until(
        lambda: new.store.get(guid).location.node == "survivor",
        WAIT,
        "recovery at the new home",
    )
    assert old.locate(guid).forwarded_to == "s2"
    assert _activations(fakes) == 1


def test_node_dead_before_the_home_flips_is_recovered_by_the_new_home(fakes: Cluster) -> None:
    old, new, _, guid = _two_storesites(fakes)
    fakes.kill_node("doomed")  # neither storesite has heard yet
    old.move_home(guid, "s2")
    wait_until(
        lambda: new.store.get(guid).location.node == "survivor",
        WAIT,
        "recovery at the new home",
    )
    assert _activations(fakes) == 1
