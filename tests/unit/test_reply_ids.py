"""Request ids parsed once: the parts a lookup found raise the client's floor at eviction.

The reply table keeps the parts of each hermesx id (``hx1.<client>.<seq>.<issued_ms>``)
from its lookup until the reply leaves the window (docs/DESIGN.md §4 "Exactly once").
A wrong parse, or parts kept under the wrong id, would show here as a wrong floor, an
old id run again, or an opaque id refused.
"""

from __future__ import annotations

import pytest

from hermesx.core.errors import RequestExpiredError
from hermesx.core.replies import (
    MAX_REQUEST_ID_CHARS,
    REPLY_TABLE_MAX_BYTES,
    ReplyTable,
    ReplyWindow,
    parse_request_id,
)
from hermesx.core.snapshot import ReplyRecord

CLIENT = "0123456789abcdef"

# (id, its parts; None: not a hermesx id, accepted as it is)
IDS = [
    (f"hx1.{CLIENT}.1.1", (CLIENT, 1, 1)),
    (f"hx1.{CLIENT}.42.1700000000000", (CLIENT, 42, 1_700_000_000_000)),
    # At the limits: 18 digits of seq, 15 of issue time (leading zeros allowed there).
    (f"hx1.{CLIENT}.{'9' * 18}.{'0' * 12}123", (CLIENT, 10**18 - 1, 123)),
    (f"hx1.{'f' * 16}.7.{'0' * 14}1", ("f" * 16, 7, 1)),
    # One past the limits, or malformed: opaque ids.
    (f"hx1.{CLIENT}.{'1' * 19}.5", None),
    (f"hx1.{CLIENT}.1.{'1' * 16}", None),
    (f"hx1.{CLIENT}.0.5", None),
    (f"hx1.{CLIENT}.01.5", None),
    (f"hx1.{CLIENT[:-1]}.1.5", None),
    (f"hx1.{CLIENT}0.1.5", None),
    (f"hx1.{CLIENT.upper()}.1.5", None),
    (f"hx1.{CLIENT}.1.5.6", None),
    (f"hx1.{CLIENT}.1", None),
    (f"hx1.{CLIENT}.1.5\n", None),
    (f"hx1.{CLIENT}.1.-5", None),
    (f"hx1.{CLIENT}.+1.5", None),
    (f"hx1.{CLIENT}.1_0.5", None),
    (f"hx1.{CLIENT}.\u0661.5", None),  # an Arabic-Indic digit: int() would take it
    (f"hx1.{CLIENT}.1.\uff15", None),  # a fullwidth digit
    (f"hx2.{CLIENT}.1.5", None),
    (f"HX1.{CLIENT}.1.5", None),
    (f"hx1x{CLIENT}.1.5", None),
    (f" hx1.{CLIENT}.1.5", None),
    ("550e8400-e29b-41d4-a716-446655440000", None),
    ("r" * MAX_REQUEST_ID_CHARS, None),
    ("", None),
]


@pytest.mark.parametrize(("text", "parts"), IDS)
def test_ids_parse_to_their_parts_or_to_nothing(
    text: str, parts: tuple[str, int, int] | None
) -> None:
    parsed = parse_request_id(text)
    assert (None if parsed is None else tuple(parsed)) == parts


def _opaque(n: int) -> ReplyRecord:
    return ReplyRecord(f"other-{n}", "", b"y")


@pytest.mark.parametrize("how", ["looked up", "not looked up", "another looked up", "restored"])
@pytest.mark.parametrize(("text", "parts"), IDS)
def test_an_evicted_id_raises_its_clients_floor_to_its_own_parts(
    text: str, parts: tuple[str, int, int] | None, how: str
) -> None:
    table = ReplyTable(ReplyWindow(entries=1))
    if how == "looked up":
        assert table.lookup(text, "incr", "g", b"x") is None
    elif how == "another looked up":
        assert table.lookup(f"hx1.{'a' * 16}.9.9", "incr", "g", b"x") is None
    assert table.record(ReplyRecord(text, "", b"x")) == 1
    if how == "restored":
        moved = ReplyTable()
        moved.restore(table.window, table.records(), table.floors(), table.forgotten_before_ms)
        table = moved
    assert table.record(_opaque(1)) == 1  # pushes ``text`` out of the window
    assert table.floors() == (() if parts is None else (parts,))
    if parts is None:
        assert table.lookup(text) is None  # opaque: runs again, as documented
    else:
        with pytest.raises(RequestExpiredError, match="older than the atom's reply window"):
            table.lookup(text)


def test_the_parts_kept_are_only_those_of_held_ids() -> None:
    table = ReplyTable(ReplyWindow(entries=4))
    for seq in range(1, 101):
        text = f"hx1.{CLIENT}.{seq}.{1000 + seq}"
        assert table.lookup(text) is None
        table.record(ReplyRecord(text, "", b"x"))
        held = {r.request_id for r in table.records()}
        assert set(table._parts) <= held and len(held) == min(seq, 4)
    assert table.floors() == ((CLIENT, 96, 1096),)


def test_an_id_recorded_again_keeps_its_parts_for_its_eviction() -> None:
    table = ReplyTable(ReplyWindow(entries=2))
    first = f"hx1.{CLIENT}.5.500"
    table.lookup(first)
    table.record(ReplyRecord(first, "", b"1"))
    table.record(_opaque(1))
    table.record(ReplyRecord(first, "", b"2"))  # moves to the end, parsed or not
    table.record(_opaque(2))
    assert table.floors() == ()
    table.record(_opaque(3))
    assert table.floors() == ((CLIENT, 5, 500),)


def test_ids_at_both_limits_at_once_keep_their_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The largest seq and issue time an id can carry, looked up (a clock that far on)."""
    from hermesx.core import replies

    monkeypatch.setattr(replies.time, "time", lambda: 1.0e12)
    table = ReplyTable(ReplyWindow(entries=1))
    text = f"hx1.{CLIENT}.{'9' * 18}.{'9' * 15}"
    assert table.lookup(text) is None
    table.record(ReplyRecord(text, "", b"x"))
    table.record(_opaque(1))
    assert table.floors() == ((CLIENT, 10**18 - 1, 10**15 - 1),)


def test_a_reply_over_the_byte_cap_into_an_empty_table_is_kept() -> None:
    """The newest reply always stays (docs/DESIGN.md §4 "Exactly once"), also one
    larger than the table's byte cap alone: a retry of its id gets it, not a rerun."""
    table = ReplyTable()
    request_id = "hx1.0123456789abcdef.1.1"
    assert table.lookup(request_id) is None
    table.record(ReplyRecord(request_id, "", bytes(REPLY_TABLE_MAX_BYTES)))
    assert len(table) == 1, "the call's only reply was evicted at once"
    assert table.lookup(request_id) is not None
