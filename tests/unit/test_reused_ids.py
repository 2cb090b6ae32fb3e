"""A request id reused for another call is refused, not answered with the first outcome.

docs/DESIGN.md §4 "Exactly once": a retry of a call gets its first outcome.
A caller that reuses an id for *another* call (``client.atom(x,
request_id=rid)`` kept and called again with other arguments or another
method, a fixed id in a script) used to get the first call's outcome as if
it were its own, silently, and its own call never ran. The reply record now
keeps a digest of its call; a different call under that id fails with a
one-line ``configuration`` error and runs nothing. The digest travels with
the table (snapshots, deltas); records of older versions, without one, are
answered as before.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from wat.runtime_helpers import GUID_A, wat

from hermesx.core import codec
from hermesx.core.delta import StateDelta, decode_delta, encode_delta
from hermesx.core.errors import ConfigurationError
from hermesx.core.replies import RequestIds, call_digest
from hermesx.core.snapshot import AtomState, ReplyRecord, decode_state, encode_state
from hermesx.runtime.atom import Atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime()
    yield rt
    rt.close()


def _counter(runtime: Runtime) -> Atom:
    return runtime.create(runtime.load(wat("testatom")), GUID_A, StandaloneHost())


def _get(atom: Atom) -> object:
    return codec.unpack(atom.invoke("get", b""))


@pytest.mark.parametrize("rid", ["hx1.c0ffee.1.1700000000000", "a-uuid-of-another-language"])
def test_an_id_reused_for_another_call_is_refused_and_runs_nothing(
    runtime: Runtime, rid: str
) -> None:
    atom = _counter(runtime)
    if rid.startswith("hx1"):
        rid = RequestIds().next()
    assert codec.unpack(atom.invoke("incr", codec.pack(1), request_id=rid)) == 1
    # The same call again: its first outcome, not run again.
    assert codec.unpack(atom.invoke("incr", codec.pack(1), request_id=rid)) == 1
    for method, args in (("incr", codec.pack(2)), ("get", b""), ("incr", b"")):
        with pytest.raises(ConfigurationError) as caught:
            atom.invoke(method, args, request_id=rid)
        message = str(caught.value)
        assert "\n" not in message and rid in message and "not run" in message
    assert _get(atom) == 1
    # And the first call's retry is still answered from the table.
    assert codec.unpack(atom.invoke("incr", codec.pack(1), request_id=rid)) == 1


def test_an_error_outcome_is_kept_for_its_own_call_only(runtime: Runtime) -> None:
    atom = _counter(runtime)
    rid = RequestIds().next()
    with pytest.raises(Exception) as first:
        atom.invoke("no_such_method", b"", request_id=rid)
    with pytest.raises(Exception) as again:
        atom.invoke("no_such_method", b"", request_id=rid)
    assert type(again.value) is type(first.value)
    with pytest.raises(ConfigurationError, match="another call"):
        atom.invoke("incr", codec.pack(1), request_id=rid)
    assert _get(atom) == 0


def test_the_check_travels_in_snapshots(runtime: Runtime) -> None:
    atom = _counter(runtime)
    rid = RequestIds().next()
    atom.invoke("incr", codec.pack(1), request_id=rid)
    copy = runtime.restore(runtime.load(wat("testatom")), GUID_A, StandaloneHost(), atom.snapshot())
    assert codec.unpack(copy.invoke("incr", codec.pack(1), request_id=rid)) == 1
    with pytest.raises(ConfigurationError):
        copy.invoke("incr", codec.pack(3), request_id=rid)
    assert _get(copy) == 1


def _state(records: tuple[ReplyRecord, ...]) -> AtomState:
    return AtomState("h" * 64, GUID_A, 65536, (), (), replies=records)


def test_records_keep_their_digest_in_snapshots_and_deltas_and_old_ones_read_as_before() -> None:
    new = ReplyRecord("r1", "", b"\x01", 5, call_digest("incr", b"\x01"))
    old = ReplyRecord("r0", "", b"\x00", 4)
    assert decode_state(encode_state(_state((old, new)))).replies == (old, new)
    delta = StateDelta(65536, (), (), (), 0, (old, new), _state(()))
    assert decode_delta(encode_delta(delta)).replies_added == (old, new)
    assert call_digest("ab", b"c") != call_digest("a", b"bc")


def test_a_record_without_a_digest_is_answered_as_before(runtime: Runtime) -> None:
    """A table restored from an older version's snapshot holds no digests."""
    atom = _counter(runtime)
    rid = RequestIds().next()
    atom.replies.restore(atom.replies.window, (ReplyRecord(rid, "", codec.pack(7)),), (), 0)
    assert codec.unpack(atom.invoke("get", b"", request_id=rid)) == 7


def test_long_arguments_differing_in_length_head_or_tail_are_told_apart() -> None:
    base = bytes(200_000)
    digests = {
        call_digest("m", base),
        call_digest("m", base + b"\x00"),
        call_digest("m", b"\x01" + base[1:]),
        call_digest("m", base[:-1] + b"\x01"),
        call_digest("n", base),
    }
    assert len(digests) == 5
