"""The call path keeps node records between calls, and never past a sign they are stale."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from hermesx.core.errors import UnreachableError
from hermesx.routing import peers
from hermesx.routing.naming import Member, Naming
from hermesx.routing.peers import Peers
from hermesx.rpc.wire import ChannelPool


class FakeNaming:
    """The cluster's live nodes as a test sets them; counts the reads."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {"n1": Member("n1", "127.0.0.1:7001")}
        self.reads = 0
        self.watchers: list[Callable[[dict[str, Member]], None]] = []

    def nodes(self) -> dict[str, Member]:
        self.reads += 1
        return dict(self.members)

    def watch_nodes(self, callback: Callable[[dict[str, Member]], None]) -> None:
        self.watchers.append(callback)
        callback(dict(self.members))

    def restart(self, name: str, address: str) -> None:
        """``name`` comes back at ``address``; the watch tells (later, in a real cluster)."""
        self.members[name] = Member(name, address)


def _peers() -> tuple[Peers, FakeNaming]:
    naming = FakeNaming()
    return Peers(cast(Naming, naming), cast(ChannelPool, cast(Any, None))), naming


def test_a_record_is_read_once_for_many_calls() -> None:
    routes, naming = _peers()
    for _ in range(100):
        assert routes.route("n1").address == "127.0.0.1:7001"
    assert naming.reads == 1


def test_a_node_restarted_at_a_new_address_is_called_there_after_its_old_one_failed() -> None:
    routes, naming = _peers()
    assert routes.route("n1").address == "127.0.0.1:7001"
    naming.restart("n1", "127.0.0.1:7002")  # the watch has not fired yet
    routes.forget_route("n1")  # what a call does when the old address does not answer
    assert routes.route("n1").address == "127.0.0.1:7002"


def test_a_change_of_the_nodes_drops_every_record() -> None:
    routes, naming = _peers()
    routes.route("n1")
    naming.restart("n1", "127.0.0.1:7003")
    for watcher in naming.watchers:
        watcher(dict(naming.members))
    assert routes.route("n1").address == "127.0.0.1:7003"


def test_a_record_is_read_again_after_its_validity(monkeypatch: pytest.MonkeyPatch) -> None:
    routes, naming = _peers()
    routes.route("n1")
    naming.restart("n1", "127.0.0.1:7004")
    monkeypatch.setattr(peers, "ROUTE_TTL_S", 0.0)
    routes.forget_route("n1")
    routes.route("n1")  # kept for 0 s
    naming.restart("n1", "127.0.0.1:7005")
    assert routes.route("n1").address == "127.0.0.1:7005"


def test_a_node_that_left_is_unreachable_and_not_kept() -> None:
    routes, naming = _peers()
    del naming.members["n1"]
    with pytest.raises(UnreachableError, match="not a live member"):
        routes.route("n1")
    naming.members["n1"] = Member("n1", "127.0.0.1:7006")
    assert routes.route("n1").address == "127.0.0.1:7006"
