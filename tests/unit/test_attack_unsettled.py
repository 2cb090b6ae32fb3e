"""A call whose outcome is unknown stays unknown until a reply of its own id says more
(docs/DESIGN.md §4 "Exactly once", step 7).

A ``Client`` sends a call again under its request id while its outcome is unknown.
A resend refused ``capacity`` (the atom or node busy at that moment) says only that
this copy did not run, not the first: the client raised it as final, and a caller
told "capacity: try later" calls again under a new id, so the call ran twice. Such a
refusal now leaves the outcome unknown: the client sends again until a copy is
answered (here, the first outcome, replayed) or the deadline ends it with
``outcome_unknown``.
"""

from __future__ import annotations

import pytest
from test_warm_road import GUID, Node, two_nodes  # noqa: F401  (a fixture)

from hermesx.core.errors import CapacityError, OutcomeUnknownError, StorageError
from hermesx.routing.invoker import Invoker
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.status import pb_error


def _nodes(request: pytest.FixtureRequest) -> tuple[Node, Node, Invoker]:
    """test_warm_road's two nodes with call listeners, and a Client's invoker."""
    nodes: tuple[Node, Node, Invoker] = request.getfixturevalue("two_nodes")
    return nodes


def _ran_once_then(refusals: int) -> tuple[list[str], object]:
    """The first copy runs, but its checkpoint fails (``storage``: it ran, unknown to the
    caller); the next ``refusals`` copies are refused ``capacity``; later ones replay."""
    runs: list[str] = []

    def answer(request: pb.InvokeRequest) -> pb.InvokeReply:
        if not runs:
            runs.append(request.request_id)
            return pb.InvokeReply(error=pb_error(StorageError("call ran but checkpoint failed")))
        if answer.refused < refusals:  # type: ignore[attr-defined]
            answer.refused += 1  # type: ignore[attr-defined]
            return pb.InvokeReply(error=pb_error(CapacityError("atom busy; try later")))
        assert request.request_id == runs[0], "a copy under another id"
        return pb.InvokeReply(result=b"\x07", tad=pb.TAD(node="n2", age=1))

    answer.refused = 0  # type: ignore[attr-defined]
    return runs, answer


def test_a_resend_refused_capacity_leaves_the_outcome_unknown_and_is_sent_again(
    request: pytest.FixtureRequest,
) -> None:
    n2, _n3, inv = _nodes(request)
    runs, n2.answer = _ran_once_then(refusals=2)  # type: ignore[assignment]
    assert inv.invoke(GUID, "incr", b"\x01", timeout=10.0).result == b"\x07"
    assert len(runs) == 1


def test_a_resend_refused_until_the_deadline_ends_with_outcome_unknown(
    request: pytest.FixtureRequest,
) -> None:
    n2, _n3, inv = _nodes(request)
    runs, n2.answer = _ran_once_then(refusals=10**6)  # type: ignore[assignment]
    with pytest.raises(OutcomeUnknownError) as caught:
        inv.invoke(GUID, "incr", b"\x01", timeout=1.0)
    assert caught.value.request_id == runs[0]


def test_capacity_at_the_first_copy_is_final_it_did_not_run(
    request: pytest.FixtureRequest,
) -> None:
    n2, _n3, inv = _nodes(request)
    n2.answer = lambda _r: pb.InvokeReply(error=pb_error(CapacityError("busy")))
    with pytest.raises(CapacityError):
        inv.invoke(GUID, "incr", b"\x01", timeout=10.0)
