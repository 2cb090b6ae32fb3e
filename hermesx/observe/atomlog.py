"""The log lines of atoms, kept bounded, following each atom wherever it runs (§12).

An atom writes lines with the ``log`` syscall. Besides the process's Python
log, each line goes into the atom's ring on its node (:data:`BOOK`, one
:class:`LogBook` per process: one process is one node), as a
:class:`LogLine`: the node, the TAD age the atom had (which names the node
incarnation and the stretch of its life), a number within that age, the
time, the level and the text. ``(age, n)`` identifies a line for life, so
copies of the same lines met at several places merge without doubles and
sort in the order they were written.

The lines follow the atom: a move carries the ring in its copy (the
``logs`` of ``CopyRequest``); after a checkpoint (and a passivation, a
move) the node sends the lines the storesite has not seen to the atom's
storesite (``Storesite/PutLogs``), which keeps them in a record of their
own beside the checkpoint, not inside the snapshot. ``hermesx logs`` merges
the storesite's lines with the ring of the node the atom is on, so after a
kill -9 and a recovery the lines up to the last checkpoint are still there.

Everything is bounded: a line's text to :data:`MAX_LINE_BYTES`, an atom's
ring (on a node, in a copy, at the storesite) to :data:`MAX_LINES` lines and
:data:`MAX_BYTES` bytes, dropping the oldest; a node keeps rings only for
the atoms active on it; what one atom writes to the node's own log, to
:data:`NODE_LOG_BYTES` in each :data:`NODE_LOG_WINDOW_S` (the lines past it
are kept in its ring only, and the next line written says how many).
"""

from __future__ import annotations

import collections
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import msgpack

from hermesx.core.errors import StorageError

__all__ = [
    "BOOK",
    "MAX_BYTES",
    "MAX_LINES",
    "MAX_LINE_BYTES",
    "LogBook",
    "LogLine",
    "decode_lines",
    "encode_lines",
    "merge_lines",
]

# Per-line overhead counted against MAX_BYTES (the fields besides the text).
LINE_OVERHEAD = 48
# Atoms whose lines a node keeps before they serve there (an init that logs,
# then fails): the oldest are dropped, so failed creates leave nothing behind.
MAX_PENDING_ATOMS = 64
# A line's text is cut to this many bytes (the runtime already bounds what one call logs).
MAX_LINE_BYTES = 1024
# What a line costs the node's log beside its UTF-8 bytes: its frame there (time, level,
# logger, GUID: about 100 bytes). Counted in an atom's share of that log below, so many
# one-letter lines (a call may log a thousand) spend it as fast as the log grows.
NODE_LOG_LINE_BYTES = 128
# What one atom's ring holds, wherever it is kept: the newest lines within both bounds.
MAX_LINES = 500
MAX_BYTES = 64 * 1024
# What one atom may write to its node's own log in each window; the rest goes only
# into its ring (`hermesx logs`), so a client calling an atom that logs on every
# call cannot grow the node's log faster than this (docs/DESIGN.md §12).
NODE_LOG_BYTES = 256 * 1024
NODE_LOG_WINDOW_S = 10.0


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line an atom logged: where (node, age), which (n within the age), when, what."""

    age: int
    n: int
    time: float  # seconds since the epoch, the node's clock
    node: str
    level: int  # the ``log`` syscall's level: 0 debug, 1 info, 2 warning, 3 error
    text: str

    @property
    def key(self) -> tuple[int, int]:
        return self.age, self.n

    @property
    def size(self) -> int:
        return len(self.text.encode("utf-8", "replace")) + len(self.node) + LINE_OVERHEAD


def _cut(text: str) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_LINE_BYTES:
        return text
    return data[: MAX_LINE_BYTES - 3].decode("utf-8", "ignore") + "..."


def _node_log_size(text: str) -> int:
    """What a line of ``text`` adds to the node's log, in bytes (UTF-8, and its frame)."""
    size = len(text)
    if not text.isascii():
        size = len(text.encode("utf-8", "replace"))
    return size + NODE_LOG_LINE_BYTES


def _bounded(lines: Iterable[LogLine]) -> list[LogLine]:
    """The newest of ``lines`` (sorted) within MAX_LINES and MAX_BYTES."""
    kept: list[LogLine] = []
    total = 0
    for line in reversed(list(lines)):
        total += line.size
        if len(kept) >= MAX_LINES or total > MAX_BYTES:
            break
        kept.append(line)
    kept.reverse()
    return kept


def merge_lines(*sources: Iterable[LogLine]) -> list[LogLine]:
    """Every line of ``sources`` once, in the order written, within the bounds."""
    by_key: dict[tuple[int, int], LogLine] = {}
    for source in sources:
        for line in source:
            by_key.setdefault(line.key, line)
    return _bounded(by_key[k] for k in sorted(by_key))


def encode_lines(lines: Iterable[LogLine]) -> bytes:
    """The wire and storage form: a msgpack array of [age, n, time, node, level, text]."""
    packed: bytes = msgpack.packb(
        [[x.age, x.n, x.time, x.node, x.level, x.text] for x in lines], use_bin_type=True
    )
    return packed


def decode_lines(data: bytes) -> list[LogLine]:
    """Lines from :func:`encode_lines`; anything malformed is a StorageError naming it."""
    if not data:
        return []
    try:
        raw = msgpack.unpackb(data, raw=False, max_array_len=MAX_LINES * 8)
        lines = [
            LogLine(int(a), int(n), float(t), str(node), int(lv), _cut(str(text)))
            for a, n, t, node, lv, text in raw
        ]
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StorageError(f"atom log lines are malformed: {exc}") from exc
    return _bounded(sorted(lines, key=lambda x: x.key))


class _Ring:
    """One atom's lines on this node."""

    __slots__ = ("age", "bytes", "lines", "next_n", "shipped", "window", "withheld", "written")

    def __init__(self, age: int) -> None:
        self.age = age
        self.lines: deque[LogLine] = deque()
        self.bytes = 0
        self.next_n = 0
        self.shipped: tuple[int, int] = (-1, -1)
        # The node's log: when this window began, bytes written in it, lines held back.
        self.window = -NODE_LOG_WINDOW_S
        self.written = 0
        self.withheld = 0

    def to_node_log(self, size: int, now: float) -> int:
        """-1 if a line of ``size`` bytes stays out of the node's log; else how many
        lines were held back since the last one written."""
        if not self.fits(size, now):
            self.withheld += 1
            return -1
        withheld, self.withheld = self.withheld, 0
        return withheld

    def fits(self, size: int, now: float) -> bool:
        """Whether ``size`` more bytes fit this window's share; counted if so."""
        if now - self.window >= NODE_LOG_WINDOW_S:
            self.window, self.written = now, 0
        if self.written + size > NODE_LOG_BYTES:
            return False
        self.written += size
        return True

    def add(self, line: LogLine) -> None:
        self.lines.append(line)
        self.bytes += line.size
        while len(self.lines) > MAX_LINES or self.bytes > MAX_BYTES:
            self.bytes -= self.lines.popleft().size


class LogBook:
    """The rings of the atoms active on this node (one book per process: :data:`BOOK`)."""

    def __init__(self, node: str = "") -> None:
        self.node = node
        self._rings: dict[str, _Ring] = {}
        # Lines of atoms not (yet) serving here: their init, a standalone run.
        self._pending: collections.OrderedDict[str, _Ring] = collections.OrderedDict()
        self._lock = threading.Lock()

    def record(self, guid: str, level: int, text: str) -> int:
        """The atom ``guid`` logged ``text`` (the ``log`` syscall). Returns -1 when the
        line must stay out of the node's own log (the atom's budget there is spent),
        else how many of the atom's lines were held back from it before this one."""
        with self._lock:
            ring = self._rings.get(guid) or self._pending.get(guid)
            if ring is None:
                ring = self._pending[guid] = _Ring(0)
                if len(self._pending) > MAX_PENDING_ATOMS:
                    self._pending.popitem(last=False)
            ring.add(LogLine(ring.age, ring.next_n, time.time(), self.node, level, _cut(text)))
            ring.next_n += 1
            return ring.to_node_log(_node_log_size(text), time.monotonic())

    def to_node_log(self, guid: str, text: str) -> bool:
        """Whether the node's own line ``text`` about the atom ``guid`` (not one of the
        atom's lines, nor counted as one held back) fits the atom's share of the node's
        log; counted in it if so."""
        with self._lock:
            ring = self._rings.get(guid) or self._pending.get(guid)
            return ring is None or ring.fits(_node_log_size(text), time.monotonic())

    def arrived(self, guid: str, age: int, carried: bytes = b"") -> None:
        """Atom ``guid`` serves here from now on at ``age``, with the lines it ``carried``."""
        lines = decode_lines(carried) if carried else []
        with self._lock:
            kept: Iterable[LogLine] = ()
            if guid in self._rings:
                kept = self._rings[guid].lines
            elif guid in self._pending:
                # Written before it served here (its init): they belong to this age.
                kept = [replace(x, age=age) for x in self._pending.pop(guid).lines]
            ring = _Ring(age)
            for line in merge_lines(kept, lines):
                ring.add(line)
            ring.next_n = max((x.n + 1 for x in ring.lines if x.age == age), default=0)
            self._rings[guid] = ring

    def lines(self, guid: str) -> list[LogLine]:
        with self._lock:
            ring = self._rings.get(guid)
            return list(ring.lines) if ring is not None else []

    def export(self, guid: str) -> bytes:
        """The atom's lines, to carry with it."""
        return encode_lines(self.lines(guid))

    def unshipped(self, guid: str) -> list[LogLine]:
        """Lines the atom's storesite has not been sent yet."""
        with self._lock:
            ring = self._rings.get(guid)
            # The common case, after every checkpoint: nothing new (lines sort by key).
            if ring is None or not ring.lines or ring.lines[-1].key <= ring.shipped:
                return []
            return [line for line in ring.lines if line.key > ring.shipped]

    def shipped(self, guid: str, lines: list[LogLine]) -> None:
        """The storesite stored ``lines`` (from :meth:`unshipped`)."""
        with self._lock:
            ring = self._rings.get(guid)
            if ring is not None and lines:
                ring.shipped = max(ring.shipped, lines[-1].key)

    def forget(self, guid: str) -> None:
        """Atom ``guid`` left this node (its lines went with it, or to its storesite)."""
        with self._lock:
            self._rings.pop(guid, None)
            self._pending.pop(guid, None)

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._rings))


BOOK = LogBook()
