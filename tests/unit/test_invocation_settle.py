"""The client resends a call whose outcome is unknown, by its request id, until its deadline."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from hermesx.core.errors import (
    HermesError,
    MethodError,
    NameNotFoundError,
    OutcomeUnknownError,
    RequestExpiredError,
    StorageError,
    UnreachableError,
)
from hermesx.core.identity import TAD
from hermesx.core.replies import parse_request_id
from hermesx.routing.invoker import Invoker
from hermesx.routing.naming import Naming
from hermesx.routing.stash import Stash
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.status import pb_error
from hermesx.rpc.wire import ChannelPool

GUID = "s1:" + "a" * 32


class FakeNaming:
    def guid_of(self, target: str) -> str:
        if target != "c":
            raise NameNotFoundError(f"no atom named {target!r}")
        return GUID


def invoker(answers: list[HermesError | bytes]) -> tuple[Invoker, list[pb.InvokeRequest]]:
    """An Invoker whose atom lives on its own node, answering ``answers`` in turn."""
    seen: list[pb.InvokeRequest] = []

    def local(request: pb.InvokeRequest) -> pb.InvokeReply:
        copy = pb.InvokeRequest()
        copy.CopyFrom(request)
        seen.append(copy)
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, HermesError):
            return pb.InvokeReply(error=pb_error(answer))
        return pb.InvokeReply(result=answer)

    stash = Stash()
    stash.update(GUID, TAD("n1", 1))
    inv = Invoker(
        cast(Naming, FakeNaming()),
        cast(ChannelPool, cast(Any, None)),
        stash,
        self_node="n1",
        local_invoke=local,
        settle_outcome=True,
    )
    return inv, seen


def test_a_call_that_ran_but_was_not_durable_is_resent_with_its_id() -> None:
    ran_not_durable = StorageError("atom c: call ran but checkpoint failed: storesite down")
    inv, seen = invoker([ran_not_durable, ran_not_durable, b"\x05"])
    outcome = inv.invoke("c", "incr", b"\x01", timeout=10.0)
    assert outcome.result == b"\x05"
    assert len(seen) == 3
    assert len({r.request_id for r in seen}) == 1
    assert parse_request_id(seen[0].request_id) is not None


def test_past_the_deadline_the_error_is_outcome_unknown_with_the_id() -> None:
    inv, seen = invoker([StorageError("atom c: call ran but checkpoint failed: down")])
    with pytest.raises(OutcomeUnknownError, match="may or may not have run") as info:
        inv.invoke("c", "incr", b"\x01", request_id="my-id", timeout=0.6)
    assert info.value.request_id == "my-id" and "retry with request id my-id" in str(info.value)
    assert len(seen) >= 2 and {r.request_id for r in seen} == {"my-id"}


@pytest.mark.parametrize(
    "error", [MethodError("unknown method frobnicate"), NameNotFoundError("no such atom")]
)
def test_a_refusal_or_a_recorded_outcome_is_final(error: HermesError) -> None:
    inv, seen = invoker([error])
    with pytest.raises(type(error)):
        inv.invoke("c", "incr", b"\x01", timeout=10.0)
    assert len(seen) == 1


def test_a_call_never_sent_is_not_outcome_unknown() -> None:
    inv, seen = invoker([b"\x01"])
    with pytest.raises(NameNotFoundError):
        inv.invoke("no-such-atom", "incr", b"\x01", timeout=10.0)
    assert not seen


def test_unreachable_after_sending_is_resent() -> None:
    inv, seen = invoker([UnreachableError("node n1 went away"), b"\x07"])
    # Unreachable breaks the chain: the invoker would ask the storesite; here the
    # stash still names n1 and the second attempt goes there again.
    inv.locate = lambda guid, timeout=10.0: TAD("n1", 1)  # type: ignore[method-assign]
    assert inv.invoke("c", "incr", b"\x01", timeout=10.0).result == b"\x07"
    assert len({r.request_id for r in seen}) == 1


def _mark_refusal(mark_ms: int) -> RequestExpiredError:
    return RequestExpiredError(
        f"atom c: request id x (incr) was issued at or before {mark_ms} ms, older than the "
        "atom's reply window (8) remembers; refused, not run again"
    )


def test_a_client_whose_clock_is_behind_catches_up_and_sends_a_new_id() -> None:
    mark = int(time.time() * 1000) + 3_600_000  # the atom forgot clients an hour "ahead"
    inv, seen = invoker([_mark_refusal(mark), b"\x01"])
    assert inv.invoke("c", "incr", b"\x01", timeout=10.0).result == b"\x01"
    first, second = (parse_request_id(r.request_id) for r in seen)
    assert first is not None and second is not None
    assert first.client == second.client and second.seq > first.seq
    assert second.issued_ms > mark
    later = parse_request_id(inv.request_ids.next())
    assert later is not None and later.issued_ms > mark


def test_a_refused_id_of_the_caller_is_never_replaced() -> None:
    inv, seen = invoker([_mark_refusal(int(time.time() * 1000) + 60_000)])
    with pytest.raises(RequestExpiredError):
        inv.invoke("c", "incr", b"\x01", request_id=inv.request_ids.next(), timeout=10.0)
    assert len(seen) == 1


def test_an_id_refused_after_an_earlier_transmission_is_never_replaced() -> None:
    ran_not_durable = StorageError("atom c: call ran but checkpoint failed: down")
    inv, seen = invoker([ran_not_durable, _mark_refusal(int(time.time() * 1000) + 60_000)])
    with pytest.raises(RequestExpiredError):
        inv.invoke("c", "incr", b"\x01", timeout=10.0)
    assert len(seen) == 2 and len({r.request_id for r in seen}) == 1
