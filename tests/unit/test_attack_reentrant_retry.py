"""Attack: a retry of a call to a reentrant atom, arriving while the first run waits.

docs/DESIGN.md §4 "Exactly once": a call sent again with its request id runs
once; the retry gets the first run's outcome. A non-reentrant atom queues the
retry behind the first run, and it finds the outcome recorded. A reentrant atom
runs calls that arrive while a call of its waits (an outgoing call, a recv) at
that blocking point, and the retry of that very call — its caller's connection
broke while it waited, so the caller sent it again — ran a second time there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from wat.runtime_helpers import GUID_A, ScriptedHost, wat

from hermesx.core import codec
from hermesx.core.errors import HermesError
from hermesx.core.replies import RequestIds
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import CallContext


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime()
    yield rt
    rt.close()


def test_a_retry_arriving_while_the_first_run_waits_does_not_run_it_again(
    runtime: Runtime,
) -> None:
    runs: list[str] = []
    release = threading.Event()

    def outgoing(ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        runs.append(method)  # each run of the atom's "call" makes one outgoing call
        release.wait(10.0)  # the first run waits here (its target is slow)
        return codec.pack(5)

    atom = runtime.create(
        runtime.load(wat("testatom")), GUID_A, ScriptedHost(outgoing), reentrant=True
    )
    rid = RequestIds().next()
    outcomes: dict[str, object] = {}

    def send(which: str) -> None:
        try:
            outcomes[which] = codec.unpack(
                atom.invoke("call", codec.pack(None), request_id=rid, timeout=20.0)
            )
        except HermesError as exc:
            outcomes[which] = exc.kind

    first = threading.Thread(target=send, args=("first",))
    first.start()
    try:
        # The retry comes while the first run waits in its outgoing call.
        threading.Event().wait(0.3)
        retry = threading.Thread(target=send, args=("retry",))
        retry.start()
        threading.Event().wait(0.5)
    finally:
        release.set()
        first.join(20.0)
    retry.join(20.0)
    assert len(runs) == 1, f"the call ran {len(runs)} times: {outcomes}"
    assert outcomes["first"] == 5
    # The retry gets the first run's outcome, or an outcome-unknown kind its caller
    # sends again on (then the table answers).
    assert outcomes["retry"] in (5, "timeout", "unreachable"), outcomes
    assert codec.unpack(atom.invoke("call", codec.pack(None), request_id=rid)) == 5
    assert len(runs) == 1
