"""A call to a node whose record is kept and whose connection is open takes the warm road
(docs/DESIGN.md §4): what it learns from a reply, and what it does on a failure, are what
the general road does."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from hermesx.core.errors import MethodError
from hermesx.core.identity import TAD
from hermesx.routing.invoker import Invoker
from hermesx.routing.naming import Member, Naming
from hermesx.routing.stash import Stash
from hermesx.rpc.callserver import Call, CallServer
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.status import pb_error
from hermesx.rpc.wire import ChannelPool

GUID = "s1:" + "b" * 32

Answer = Callable[[pb.InvokeRequest], pb.InvokeReply]


class FakeNaming:
    """Two nodes, each with a call listener; the atom is known by GUID only."""

    def __init__(self, members: dict[str, Member]) -> None:
        self.members = members

    def guid_of(self, target: str) -> str:
        return target

    def nodes(self) -> dict[str, Member]:
        return dict(self.members)

    def watch_nodes(self, callback: Callable[[dict[str, Member]], None]) -> None:
        callback(dict(self.members))


class Node:
    """A call listener answering ``invoke`` with ``answer``; counts the requests it saw."""

    def __init__(self, name: str, answer: Answer) -> None:
        self.name, self.answer, self.seen = name, answer, []
        self.server = CallServer(name, workers=4, tls=None)
        self.server.register("invoke", self._invoke, "Supervisor/Invoke", inline=True)
        self.address = self.server.start("127.0.0.1:0")

    def _invoke(self, call: Call) -> bytes:
        request = pb.InvokeRequest.FromString(call.body)
        self.seen.append(request.request_id)
        return self.answer(request).SerializeToString()  # type: ignore[no-any-return]

    def member(self) -> Member:
        return Member(self.name, "127.0.0.1:1", data={"call": self.address})


def _ran(node: str, age: int) -> Answer:
    def answer(request: pb.InvokeRequest) -> pb.InvokeReply:
        return pb.InvokeReply(result=request.args, tad=pb.TAD(node=node, age=age))

    return answer


@pytest.fixture
def two_nodes() -> Iterator[tuple[Node, Node, Invoker]]:
    n2, n3 = Node("n2", _ran("n2", 1)), Node("n3", _ran("n3", 2))
    stash = Stash()
    stash.update(GUID, TAD("n2", 1))
    channels = ChannelPool()
    naming = FakeNaming({"n2": n2.member(), "n3": n3.member()})
    inv = Invoker(cast(Naming, naming), channels, stash, settle_outcome=True)
    try:
        yield n2, n3, inv
    finally:
        channels.close()
        n2.server.stop()
        n3.server.stop()


def test_a_warm_call_that_finds_its_atom_moved_follows_it(
    two_nodes: tuple[Node, Node, Invoker],
) -> None:
    n2, n3, inv = two_nodes
    assert inv.invoke(GUID, "echo", b"\x01").result == b"\x01"  # opens the connection
    assert inv.invoke(GUID, "echo", b"\x02").result == b"\x02"  # the warm road
    n2.answer = lambda _r: pb.InvokeReply(moved=pb.TAD(node="n3", age=2))
    outcome = inv.invoke(GUID, "echo", b"\x03")
    assert outcome.result == b"\x03" and outcome.tad == TAD("n3", 2)
    assert n3.seen and n3.seen[-1] == n2.seen[-1], "the moved call kept its request id"
    assert inv.stash.get(GUID) == TAD("n3", 2)


def test_a_warm_call_whose_node_answers_an_error_raises_it_once(
    two_nodes: tuple[Node, Node, Invoker],
) -> None:
    n2, _n3, inv = two_nodes
    inv.invoke(GUID, "echo", b"\x01")
    n2.answer = lambda _r: pb.InvokeReply(error=pb_error(MethodError("no method frob")))
    before = len(n2.seen)
    with pytest.raises(MethodError, match="no method frob"):
        inv.invoke(GUID, "frob", b"\x01")
    assert len(n2.seen) == before + 1


def test_a_warm_call_to_a_node_gone_is_sent_again_where_the_storesite_says(
    two_nodes: tuple[Node, Node, Invoker],
) -> None:
    n2, n3, inv = two_nodes
    inv.invoke(GUID, "echo", b"\x01")
    # The atom moved to n3 and n2 went away while its connection was still open.
    located: list[str] = []

    def locate(guid: str, timeout: float = 10.0) -> TAD:
        located.append(guid)
        return TAD("n3", 2)

    cast(Any, inv).locate = locate
    n2.server.stop()
    outcome = inv.invoke(GUID, "echo", b"\x04", timeout=10.0)
    assert outcome.result == b"\x04" and located == [GUID]
    assert len(set(n3.seen)) == 1
