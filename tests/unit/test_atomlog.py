"""Atom log rings: bounded, merged without doubles, read back safely (docs/DESIGN.md §12)."""

from __future__ import annotations

import pathlib

import msgpack
import pytest

from hermesx.core.errors import StorageError
from hermesx.core.identity import GUID, TAD
from hermesx.observe.atomlog import (
    MAX_BYTES,
    MAX_LINE_BYTES,
    MAX_LINES,
    MAX_PENDING_ATOMS,
    LogBook,
    decode_lines,
    encode_lines,
    merge_lines,
)
from hermesx.rpc.proto import hermesx_pb2 as pb
from storesite.store import AtomStore


def test_an_atom_that_logs_without_end_keeps_only_its_newest_lines_within_the_bounds() -> None:
    book = LogBook("n1")
    book.arrived("g", 3)
    for i in range(20 * MAX_LINES):
        book.record("g", 1, f"line {i}")
    lines = book.lines("g")
    assert len(lines) == MAX_LINES
    assert lines[-1].text == f"line {20 * MAX_LINES - 1}"
    assert [x.n for x in lines] == list(range(19 * MAX_LINES, 20 * MAX_LINES))
    assert {(x.node, x.age) for x in lines} == {("n1", 3)}

    book.record("g", 3, "x" * (10 * MAX_LINE_BYTES))
    assert len(book.lines("g")[-1].text.encode()) <= MAX_LINE_BYTES
    for _ in range(MAX_LINES):
        book.record("g", 1, "y" * MAX_LINE_BYTES)
    assert sum(x.size for x in book.lines("g")) <= MAX_BYTES
    assert len(encode_lines(book.lines("g"))) <= MAX_BYTES


def test_lines_carried_and_stored_twice_merge_once_in_the_order_written() -> None:
    first = LogBook("n1")
    first.arrived("g", 1)
    first.record("g", 1, "a")
    first.record("g", 1, "b")
    carried = first.export("g")
    second = LogBook("n2")
    second.arrived("g", 2, carried)
    second.record("g", 2, "c")
    merged = merge_lines(decode_lines(carried), second.lines("g"), decode_lines(carried))
    assert [(x.text, x.node, x.age) for x in merged] == [
        ("a", "n1", 1),
        ("b", "n1", 1),
        ("c", "n2", 2),
    ]
    assert [x.text for x in second.unshipped("g")] == ["a", "b", "c"]
    second.shipped("g", second.unshipped("g")[:2])
    assert [x.text for x in second.unshipped("g")] == ["c"]
    second.forget("g")
    assert second.lines("g") == []


@pytest.mark.parametrize(
    "data",
    [b"\xc1", msgpack.packb([[1, 2]]), msgpack.packb({"a": 1}), msgpack.packb([["x"] * 6])],
)
def test_malformed_lines_are_a_storage_error(data: bytes) -> None:
    with pytest.raises(StorageError, match="malformed"):
        decode_lines(data)


def test_lines_of_an_init_take_the_first_age_and_failed_creates_leave_little() -> None:
    book = LogBook("n1")
    book.record("g", 1, "init")
    book.arrived("g", 1)
    book.record("g", 1, "call")
    assert [(x.text, x.age, x.n) for x in book.lines("g")] == [("init", 1, 0), ("call", 1, 1)]
    for i in range(10 * MAX_PENDING_ATOMS):  # inits that logged and failed
        book.record(f"failed-{i}", 1, "x" * MAX_LINE_BYTES)
    assert sum(1 for guid in book) == 1
    assert sum(len(book._pending[g].lines) for g in book._pending) == MAX_PENDING_ATOMS


def test_a_storesite_keeps_the_lines_merged_bounded_across_a_restart_until_forgotten(
    tmp_path: pathlib.Path,
) -> None:
    node = LogBook("n1")
    node.arrived("g", 1)
    for i in range(MAX_LINES + 10):
        node.record("g", 1, f"line {i}")
    sent = node.export("g")
    with AtomStore("s1", tmp_path / "data", init=True) as store:
        guid = str(GUID.new("s1"))
        meta = pb.AtomMeta(name="echo", module_hash="ab" * 32)
        store.register_atom(guid, meta, TAD("n1", 1), b"snap")
        store.logs.put(guid, sent)
        store.logs.put(guid, sent)  # sent again after a lost reply: kept once
    with AtomStore("s1", tmp_path / "data") as store:
        kept = decode_lines(store.logs.get(guid))
        assert len(kept) == MAX_LINES and kept[-1].text == f"line {MAX_LINES + 9}"
        assert len({x.key for x in kept}) == MAX_LINES
        store.forget(guid)
        assert store.logs.get(guid) == b""


def test_an_atoms_share_of_its_nodes_log_is_bounded_in_each_window() -> None:
    """Past NODE_LOG_BYTES in a window a line stays out of the node's log (-1); the
    first line written in the next window says how many were held back."""
    from hermesx.observe.atomlog import NODE_LOG_BYTES, NODE_LOG_WINDOW_S, _Ring

    ring, line = _Ring(1), 4096
    fits = NODE_LOG_BYTES // line
    assert [ring.to_node_log(line, 100.0) for _ in range(fits)] == [0] * fits
    assert [ring.to_node_log(line, 100.0 + i) for i in range(3)] == [-1, -1, -1]
    assert ring.to_node_log(line, 100.0 + NODE_LOG_WINDOW_S) == 3
    assert ring.to_node_log(line, 100.0 + NODE_LOG_WINDOW_S) == 0


def test_many_short_lines_spend_an_atoms_share_as_fast_as_they_grow_the_nodes_log() -> None:
    """A call may log a thousand one-letter lines: each costs the node's log its frame
    (time, level, logger, GUID) too, and a letter past ASCII two or more bytes."""
    import logging

    from hermesx.observe.atomlog import NODE_LOG_BYTES, LogBook

    book, guid = LogBook("n1"), "s1:" + "c" * 32
    book.arrived(guid, 1)
    frame = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for text in ("x", "é" * 300):
        line = frame.format(logging.makeLogRecord({"name": "hermesx.atom", "msg": text}))
        written = 0
        for _ in range(NODE_LOG_BYTES // 64):  # 4096 lines: past the share either way
            if book.record(guid, logging.INFO, text) >= 0:
                written += len(f"atom {guid}: {line}\n".encode())
        assert 0 < written <= NODE_LOG_BYTES
        book.forget(guid)
        book.arrived(guid, 1)


def test_the_nodes_own_notes_about_an_atom_come_out_of_its_share_not_its_count() -> None:
    """The warning that a call logged past its per-call bound is written once a call:
    within the atom's share, and the count of its held-back lines still reaches the log."""
    import logging

    from hermesx.observe.atomlog import NODE_LOG_BYTES, LogBook

    book, guid = LogBook("n1"), "s1:" + "d" * 32
    book.arrived(guid, 1)
    while book.record(guid, logging.INFO, "x" * 10) >= 0:
        pass
    assert not book.to_node_log(guid, "a call logged past its bound")
    assert book.to_node_log("s1:" + "e" * 32, "an atom with no lines here") is True
    ring = book._rings[guid]
    ring.window -= 60.0  # the next window
    assert book.to_node_log(guid, "a call logged past its bound")
    assert book.record(guid, logging.INFO, "back") == 1  # the line held back, told
    assert ring.written < NODE_LOG_BYTES
