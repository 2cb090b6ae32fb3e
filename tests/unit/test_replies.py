"""The reply window: a retry is answered from the table, or refused once its reply is gone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from unittest import mock

import pytest
from wat.runtime_helpers import GUID_A, wat

from hermesx.core import codec, replies
from hermesx.core.errors import ConfigurationError, OutcomeUnknownError, RequestExpiredError
from hermesx.core.replies import (
    ReplyTable,
    ReplyWindow,
    RequestIds,
    parse_reply_window,
    parse_request_id,
)
from hermesx.core.snapshot import AtomState, ReplyRecord, decode_state, encode_state
from hermesx.runtime.atom import Atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime()
    yield rt
    rt.close()


def counter(runtime: Runtime, window: ReplyWindow) -> Atom:
    atom = runtime.create(runtime.load(wat("testatom")), GUID_A, StandaloneHost())
    atom.replies.window = window
    return atom


def incr(atom: Atom, request_id: str) -> object:
    return codec.unpack(atom.invoke("incr", codec.pack(1), request_id=request_id))


def test_ids_of_one_client_share_its_name_and_count_up() -> None:
    ids = RequestIds()
    first, second = parse_request_id(ids.next()), parse_request_id(ids.next())
    assert first is not None and second is not None
    assert first.client == second.client == ids.client
    assert (first.seq, second.seq) == (1, 2)
    assert abs(first.issued_ms - time.time() * 1000) < 5000
    assert RequestIds().client != ids.client


@pytest.mark.parametrize(
    "text", ["", "a3f1", "hx1.abc.1.2", "hx1.0123456789abcdef.0.5", "hx1.0123456789ABCDEF.1.5"]
)
def test_ids_of_other_forms_are_opaque(text: str) -> None:
    assert parse_request_id(text) is None


def test_a_retry_past_the_window_is_refused_and_does_not_run(runtime: Runtime) -> None:
    atom = counter(runtime, ReplyWindow(entries=4))
    ids = RequestIds()
    old = ids.next()
    assert incr(atom, old) == 1
    for _ in range(10):
        incr(atom, ids.next())
    with pytest.raises(RequestExpiredError, match="reply window"):
        incr(atom, old)
    assert codec.unpack(atom.invoke("get", b"")) == 11
    # A recent id is answered from the table, a new one runs.
    recent = ids.next()
    assert incr(atom, recent) == 12
    assert incr(atom, recent) == 12
    assert incr(atom, ids.next()) == 13


def test_an_opaque_id_past_the_window_runs_again(runtime: Runtime) -> None:
    """Documented: ids that carry no client and sequence cannot be told from new ones."""
    atom = counter(runtime, ReplyWindow(entries=2))
    for rid in ("a", "b", "c"):
        incr(atom, rid)
    assert incr(atom, "a") == 4
    assert incr(atom, "c") == 3


def test_replies_older_than_the_age_window_are_refused(runtime: Runtime) -> None:
    atom = counter(runtime, ReplyWindow(entries=100, seconds=60))
    ids = RequestIds()
    rid = ids.next()
    assert incr(atom, rid) == 1
    assert incr(atom, rid) == 1
    later = time.time() + 61
    with mock.patch.object(replies.time, "time", return_value=later):
        with pytest.raises(RequestExpiredError):
            incr(atom, rid)
        assert incr(atom, ids.next()) == 2


def test_the_window_and_what_it_forgot_travel_in_snapshots(runtime: Runtime) -> None:
    atom = counter(runtime, ReplyWindow(entries=3, seconds=900))
    ids = RequestIds()
    old = ids.next()
    incr(atom, old)
    for _ in range(5):
        incr(atom, ids.next())
    snapshot = atom.snapshot()
    copy = runtime.restore(runtime.load(wat("testatom")), GUID_A, StandaloneHost(), snapshot)
    assert copy.replies.window == ReplyWindow(3, 900)
    with pytest.raises(RequestExpiredError):
        incr(copy, old)
    assert codec.unpack(copy.invoke("get", b"")) == 6


def test_clients_past_the_floor_limit_are_judged_by_issue_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replies, "MIN_FLOOR_CLIENTS", 2)
    table = ReplyTable(ReplyWindow(entries=1))

    def rid(client: int, seq: int, issued_ms: int) -> str:
        return f"hx1.{client:016x}.{seq}.{issued_ms}"

    made = [rid(i, 1, 1000 + i) for i in range(4)]
    for request_id in made:
        table.record(ReplyRecord(request_id, "", b"x"))
    # Three left the window and two floors remain: client 0 is judged by its issue time.
    assert len(table.floors()) == 2 and table.forgotten_before_ms == 1000
    with pytest.raises(RequestExpiredError, match="issued at or before 1000"):
        table.lookup(made[0])
    with pytest.raises(RequestExpiredError, match="older than"):
        table.lookup(made[1])
    assert table.lookup(made[3]) is not None
    # A client the atom never saw, issuing later, is welcome; so is a remembered one's next call.
    assert table.lookup(rid(9, 1, 1001)) is None
    assert table.lookup(rid(1, 2, 1005)) is None


def test_an_id_from_the_future_is_refused_and_cannot_poison_the_mark() -> None:
    """A forged (or wrong-clock) id far ahead would, once out of the window, make the
    forgotten-before mark run ahead; victims catching up would then outrun their floors."""
    table = ReplyTable(ReplyWindow(entries=1))
    ahead = int(time.time() * 1000) + replies.MAX_ISSUED_AHEAD_MS + 60_000
    forged = f"hx1.{'f' * 16}.1.{ahead}"
    with pytest.raises(ConfigurationError, match="ahead of the atom's clock"):
        table.lookup(forged, method="incr", guid="g")
    assert table.forgotten_before_ms == 0 and len(table) == 0
    # A little ahead (clocks differ) is fine.
    assert table.lookup(f"hx1.{'e' * 16}.1.{int(time.time() * 1000) + 1000}") is None


def test_a_long_request_id_is_refused_and_ids_count_toward_the_table_bytes() -> None:
    table = ReplyTable()
    with pytest.raises(ConfigurationError, match="longer than 128"):
        table.lookup("r" * (replies.MAX_REQUEST_ID_CHARS + 1), method="incr", guid="g")
    table.record(ReplyRecord("x" * 100, "", b"12345"))
    assert table.payload_bytes == 105


def test_a_long_request_id_fails_the_call_clearly_and_runs_nothing(runtime: Runtime) -> None:
    atom = counter(runtime, ReplyWindow(entries=4))
    with pytest.raises(ConfigurationError, match="request id of 4096 characters"):
        incr(atom, "r" * 4096)
    assert codec.unpack(atom.invoke("get", b"")) == 0


def test_a_client_with_concurrent_calls_keeps_its_later_seqs() -> None:
    table = ReplyTable(ReplyWindow(entries=2))
    ids = RequestIds()
    first, second, third = ids.next(), ids.next(), ids.next()
    table.record(ReplyRecord(second, "", b"2"))
    table.record(ReplyRecord(third, "", b"3"))
    table.record(ReplyRecord(RequestIds().next(), "", b"other"))
    # ``second`` left the window: ``first`` (never seen) is refused as well, never run.
    with pytest.raises(RequestExpiredError):
        table.lookup(first)
    assert table.lookup(third) == ReplyRecord(third, "", b"3", table.records()[0].recorded_ms)
    assert table.lookup(ids.next()) is None


def test_snapshots_of_the_old_format_still_load() -> None:
    state = AtomState("h", GUID_A, 0, (), (), replies=(ReplyRecord("r", "", b"x"),))
    data = bytearray(encode_state(state))
    body = replies_free_body(bytes(data))
    old = decode_state(body)
    assert old.replies[0].request_id == "r"
    assert old.reply_window == (1024, 0.0) and old.reply_floors == ()


def replies_free_body(data: bytes) -> bytes:
    """``data`` re-encoded the way snapshots were before reply windows existed."""
    import msgpack

    header, body = data[:8], data[8:]
    fields = msgpack.unpackb(body, raw=False)
    fields.pop()
    fields[6] = [r[:3] for r in fields[6]]
    return header + msgpack.packb(fields, use_bin_type=True)


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("4096", ReplyWindow(4096, 0.0)),
        ("600s", ReplyWindow(1024, 600.0)),
        ("16,2.5s", ReplyWindow(16, 2.5)),
        (" 8 , 60s ", ReplyWindow(8, 60.0)),
    ],
)
def test_reply_window_syntax(text: str, window: ReplyWindow) -> None:
    assert parse_reply_window(text) == window


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("0", "between 1"),
        ("70000", "between 1"),
        ("-1", "between 1"),
        ("lots", "lots"),
        ("0s", "0s"),
        ("nans", "nans"),
        ("infs", "infs"),
        ("5,6", "twice"),
        ("1,2s,3", "ENTRIES"),
        ("", "ENTRIES"),
    ],
)
def test_bad_reply_windows_are_clear_errors(text: str, word: str) -> None:
    with pytest.raises(ConfigurationError, match="reply window") as info:
        parse_reply_window(text)
    assert word in str(info.value)


def test_outcome_unknown_carries_its_request_id_across_the_wire() -> None:
    from hermesx.core.errors import error_from_wire

    err = OutcomeUnknownError("atom c: incr may or may not have run", "hx1.x.1.2")
    assert err.request_id == "hx1.x.1.2" and "retry with request id hx1.x.1.2" in str(err)
    again = error_from_wire(err.kind, str(err))
    assert isinstance(again, OutcomeUnknownError) and again.request_id == "hx1.x.1.2"
