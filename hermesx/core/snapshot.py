"""Versioned snapshot format of an atom's state (docs/DESIGN.md §3, §5, §6).

A snapshot is what moves and what storesites keep: linear memory, mutable
globals, the atom KV, the reply table (so a retried request after a move or a
recovery returns its first reply), interrupts and future completions not yet
delivered, and the future-id counter. It does not hold the module: that is
stored once by content hash, and the snapshot names the hash it belongs to.

Layout: ``b"HXSNAP"``, one format-version byte, one flags byte, then a msgpack
array. Memory is stored as runs of non-zero 4 KiB chunks: atoms' memories are
mostly zero (reserved heap, stack) and skipping zero pages is far cheaper than
general compression. Flag ``ZLIB`` marks a body compressed with zlib, which a
caller may ask for when size matters more than time (zlib level 1 costs ~7 ms
per MiB here, over the 5 ms budget of a move).

A large state is produced in pieces of at most :data:`PIECE_BYTES`, and the
thread lets other threads take the GIL between pieces: one long C call (a
64 MiB ``msgpack.packb``) would hold it throughout, and the node's ZooKeeper
heartbeat thread, starved, would lose the node's session.

Every checkpoint travels and is stored with :func:`snapshot_checksum` of its
bytes (docs/DESIGN.md §6): the node computes it, the storesite checks it when the
checkpoint arrives and whenever it reads it back, and a node checks it again
before it restores an atom, so damage anywhere on the way is never restored.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

import msgpack

from hermesx.core.errors import CheckpointDamagedError, StorageError

__all__ = [
    "FORMAT_VERSION",
    "AtomState",
    "ReplyRecord",
    "Shape",
    "decode_state",
    "encode_state",
    "memory_segments",
    "new_reply_record",
    "record_fields",
    "record_from",
    "snapshot_checksum",
    "snapshot_shape",
    "verify_checksum",
    "yield_gil",
]

MAGIC = b"HXSNAP"
FORMAT_VERSION = 1
FLAG_ZLIB = 0x01


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    """The first outcome of a request id: ``error_kind`` empty means success."""

    request_id: str
    error_kind: str
    payload: bytes  # result bytes, or the UTF-8 error message
    recorded_ms: int = 0  # wall clock of the node that recorded it (the age window)
    # What was called (hermesx.core.replies.call_digest): the id reused for another
    # method or other arguments is refused, not answered with this outcome. Empty in
    # records of older versions: then not checked.
    digest: bytes = b""


# Fills a ReplyRecord's slots through their own descriptors: every call with a
# request id makes one, and the frozen dataclass's __init__ (object.__setattr__
# per field) costs three times as much. The record is the same in every way.
_RECORD_FIELDS = ("request_id", "error_kind", "payload", "recorded_ms", "digest")
if tuple(f.name for f in dataclass_fields(ReplyRecord)) != _RECORD_FIELDS:
    raise TypeError("new_reply_record sets each field of ReplyRecord: name a new one there")
_SLOT_SETTERS = tuple(ReplyRecord.__dict__[name].__set__ for name in _RECORD_FIELDS)


def new_reply_record(
    request_id: str, error_kind: str, payload: bytes, recorded_ms: int, digest: bytes
) -> ReplyRecord:
    """``ReplyRecord(request_id, error_kind, payload, recorded_ms, digest)``, made faster."""
    record = _new_object(ReplyRecord)
    set_id, set_kind, set_payload, set_ms, set_digest = _SLOT_SETTERS
    set_id(record, request_id)
    set_kind(record, error_kind)
    set_payload(record, payload)
    set_ms(record, recorded_ms)
    set_digest(record, digest)
    return record


_new_object = object.__new__


def record_fields(record: ReplyRecord) -> list[object]:
    """``record`` as the array a snapshot or a delta holds (the digest only when set,
    so a record without one reads as before)."""
    fields: list[object] = [record.request_id, record.error_kind, record.payload]
    fields.append(record.recorded_ms)
    if record.digest:
        fields.append(record.digest)
    return fields


def record_from(fields: Sequence[Any]) -> ReplyRecord:
    """The record an array of :func:`record_fields` holds (older ones have 3 or 4 items)."""
    recorded_ms = int(fields[3]) if len(fields) > 3 else 0
    digest = bytes(fields[4]) if len(fields) > 4 else b""
    return ReplyRecord(str(fields[0]), str(fields[1]), bytes(fields[2]), recorded_ms, digest)


@dataclass(frozen=True, slots=True)
class AtomState:
    module_hash: str
    guid: str
    memory_size: int
    # (offset, bytes) runs of non-zero memory; everything else is zero.
    memory: tuple[tuple[int, bytes], ...]
    # (export name, value type, value) per mutable global.
    globals: tuple[tuple[str, str, int | float], ...]
    kv: dict[bytes, bytes] = field(default_factory=dict)
    replies: tuple[ReplyRecord, ...] = ()
    # Interrupts sent to the atom and not yet delivered: (code, payload).
    interrupts: tuple[tuple[int, bytes], ...] = ()
    # Future completions not yet delivered: (future id, status, payload).
    futures: tuple[tuple[int, int, bytes], ...] = ()
    next_future_id: int = 1
    generation: int = 0
    # The reply table's window (entries, seconds; 0 s = no age limit), and what
    # it remembers of replies that left it (hermesx.core.replies): per client
    # (client, highest seq, highest issued ms), and the forgotten-before mark.
    reply_window: tuple[int, float] = (1024, 0.0)
    reply_floors: tuple[tuple[str, int, int], ...] = ()
    replies_forgotten_before_ms: int = 0


# Zero runs are found in 4 KiB chunks, not whole 64 KiB wasm pages: a small
# atom's pages are mostly zero around a little data and stack, and a counter's
# snapshot shrinks from ~130 KB to a few KB, which every checkpoint, move and
# activation pays for.
CHUNK = 4096
# Most bytes copied or packed between two chances for other threads to run.
PIECE_BYTES = 1 << 20
_ZERO_PIECE = bytes(PIECE_BYTES)
_ZERO_CHUNK = bytes(CHUNK)


def yield_gil() -> None:
    """Let any thread waiting for the GIL run (sleep(0) releases it).

    A system call: on a busy machine it may give the CPU away for milliseconds,
    so it is called between pieces of a large state only, never for a small one.
    """
    time.sleep(0)


def memory_segments(memory: bytes | bytearray | memoryview) -> tuple[tuple[int, bytes], ...]:
    """Runs of consecutive non-zero 4 KiB chunks of ``memory``, each at most
    :data:`PIECE_BYTES` long (a longer run is stored as several).

    The memory is read a piece at a time into bytes, whose comparisons are a
    ``memcmp``: comparing memoryview slices goes item by item, ~40 times
    slower (a 1 MiB counter's snapshot took ~0.8 ms that way).
    """
    view = memoryview(memory).cast("B")
    size = len(view)
    runs: list[tuple[int, bytes]] = []
    start = -1
    for base in range(0, size, PIECE_BYTES):
        if base:
            yield_gil()  # between pieces; a memory of one piece never waits here
        piece = bytes(view[base : base + PIECE_BYTES])
        if start < 0 and piece == _ZERO_PIECE[: len(piece)]:
            continue  # no run open and nothing but zeros here
        for offset in range(base, base + len(piece), CHUNK):
            end = min(offset + CHUNK, size)
            zero = _ZERO_CHUNK if end - offset == CHUNK else bytes(end - offset)
            is_zero = piece[offset - base : end - base] == zero
            if start >= 0 and (is_zero or offset - start >= PIECE_BYTES):
                runs.append((start, bytes(view[start:offset])))
                start = -1
            if not is_zero and start < 0:
                start = offset
    if start >= 0:
        runs.append((start, bytes(view[start:size])))
    return tuple(runs)


def snapshot_checksum(data: bytes) -> int:
    """CRC-32 (zlib's, ISO-HDLC) of a snapshot's bytes.

    It guards against storage and transfer damage, not tampering (TLS and
    file permissions do that): it catches every burst of up to 32 flipped
    bits and any other damage with odds of 2**-32 of missing it, at ~3 GB/s
    here with the GIL released (BLAKE2b ran at ~0.6 GB/s, sha256 at ~1.3 GB/s).
    """
    return zlib.crc32(data) & 0xFFFFFFFF


def verify_checksum(data: bytes, expected: int, what: str) -> None:
    """CheckpointDamagedError naming ``what`` unless ``data`` has checksum ``expected``."""
    actual = snapshot_checksum(data)
    if actual != expected:
        raise CheckpointDamagedError(
            f"{what} is damaged: its {len(data)} bytes have checksum {actual:08x}, "
            f"not the {expected:08x} recorded with it"
        )


def _body_pieces(state: AtomState) -> Iterator[bytes]:
    """The msgpack body, in pieces; the same bytes as one ``packb`` of the whole list."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    pending = 0

    def flush() -> bytes:
        data: bytes = packer.bytes()
        packer.reset()
        return data

    packer.pack_array_header(12)
    packer.pack(state.module_hash)
    packer.pack(state.guid)
    packer.pack(state.memory_size)
    sections: list[list[list[object]] | Iterator[list[object]]] = [
        ([offset, data] for offset, data in state.memory),
        [[name, kind, value] for name, kind, value in state.globals],
        ([k, v] for k, v in state.kv.items()),
        (record_fields(r) for r in state.replies),
        ([code, payload] for code, payload in state.interrupts),
        ([fid, status, payload] for fid, status, payload in state.futures),
    ]
    lengths = (
        len(state.memory),
        len(state.globals),
        len(state.kv),
        len(state.replies),
        len(state.interrupts),
        len(state.futures),
    )
    for items, length in zip(sections, lengths, strict=True):
        packer.pack_array_header(length)
        for item in items:
            packer.pack(item)
            pending = len(packer.getbuffer())
            if pending >= PIECE_BYTES:
                yield flush()
                yield_gil()
    packer.pack(state.next_future_id)
    packer.pack(state.generation)
    packer.pack(
        [
            state.reply_window[0],
            state.reply_window[1],
            [[c, seq, ms] for c, seq, ms in state.reply_floors],
            state.replies_forgotten_before_ms,
        ]
    )
    yield flush()


def encode_state(state: AtomState, *, compress: bool = False) -> bytes:
    flags = FLAG_ZLIB if compress else 0
    parts = [MAGIC + bytes([FORMAT_VERSION, flags])]
    if compress:
        zipper = zlib.compressobj(1)
        for piece in _body_pieces(state):
            parts.append(zipper.compress(piece))
        parts.append(zipper.flush())
    else:
        parts.extend(_body_pieces(state))
    return b"".join(parts)


class _PieceReader:
    """Feeds an Unpacker the body a piece at a time, letting other threads run between pieces."""

    def __init__(self, body: bytes | memoryview) -> None:
        self.body = memoryview(body)
        self.fed = 0
        self.unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, max_buffer_size=max(len(self.body), 1)
        )

    def _next(self, read: str) -> Any:
        while True:
            try:
                return getattr(self.unpacker, read)()
            except msgpack.OutOfData:
                if self.fed >= len(self.body):
                    raise ValueError("the snapshot ends inside its data") from None
                if self.fed:
                    yield_gil()  # between pieces; a state of one piece never waits here
                self.unpacker.feed(self.body[self.fed : self.fed + PIECE_BYTES])
                self.fed += PIECE_BYTES

    def array_header(self) -> int:
        return int(self._next("read_array_header"))

    def item(self) -> Any:
        return self._next("unpack")

    def check_end(self) -> None:
        if self.fed < len(self.body) or self.unpacker.tell() != len(self.body):
            raise ValueError("bytes after the end of the snapshot")


def _unpack_body(body: bytes | memoryview) -> list[Any]:
    """The body's top-level list, unpacked a piece at a time (see module docstring)."""
    if len(body) <= PIECE_BYTES:
        # One piece: unpacked at once (a delta's small rest is decoded on every
        # durable call; the piece reader's per-item calls cost it several times more).
        whole = msgpack.unpackb(body, raw=False, strict_map_key=False)
        if not isinstance(whole, list):
            raise ValueError(f"the snapshot's body is a {type(whole).__name__}, not a list")
        return whole
    reader = _PieceReader(body)
    top: list[Any] = []
    for index in range(reader.array_header()):
        if index in (3, 5, 6):  # memory runs, KV entries, replies: possibly large
            top.append([reader.item() for _ in range(reader.array_header())])
        else:
            top.append(reader.item())
    reader.check_end()
    return top


@dataclass(frozen=True, slots=True)
class Shape:
    """What a delta must fit in the state it is composed onto (hermesx.core.delta)."""

    guid: str
    module_hash: str
    memory_size: int
    replies: int


def _body(data: bytes) -> bytes | memoryview:
    """The msgpack body of snapshot ``data``; StorageError when it is not a snapshot."""
    header = len(MAGIC) + 2
    if len(data) < header or data[: len(MAGIC)] != MAGIC:
        raise StorageError("not a hermesx atom snapshot (bad magic)")
    version, flags = data[len(MAGIC)], data[len(MAGIC) + 1]
    if version != FORMAT_VERSION:
        raise StorageError(
            f"atom snapshot format {version} is not supported (this runtime reads {FORMAT_VERSION})"
        )
    body: bytes | memoryview = memoryview(data)[header:]
    if flags & FLAG_ZLIB:
        try:
            body = zlib.decompress(body)
        except zlib.error as exc:
            raise StorageError(f"atom snapshot is damaged: {exc}") from exc
    return body


def snapshot_shape(data: bytes) -> Shape:
    """The :class:`Shape` of snapshot ``data``, read without building its state: the
    memory runs, globals and KV are skipped, the replies only counted (a storesite
    checks a delta against it without decoding a large state)."""
    body = _body(data)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(body), 1))
    unpacker.feed(body)
    try:
        unpacker.read_array_header()
        module_hash, guid, memory_size = unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
        for _ in range(3):  # memory runs, globals, KV entries
            unpacker.skip()
        replies = unpacker.read_array_header()
        return Shape(str(guid), str(module_hash), int(memory_size), int(replies))
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.OutOfData) as exc:
        raise StorageError(f"atom snapshot is damaged: {exc}") from exc


def decode_state(data: bytes) -> AtomState:
    """Parse a snapshot; StorageError when it is not one or is damaged."""
    body = _body(data)
    try:
        fields = _unpack_body(body)
        # Snapshots written before reply windows existed end at the generation.
        window: Any = [1024, 0.0, [], 0]
        if len(fields) == 12:
            window = fields.pop()
        (
            module_hash,
            guid,
            memory_size,
            memory,
            globals_,
            kv,
            replies,
            interrupts,
            futures,
            next_future_id,
            generation,
        ) = fields
        entries, seconds, floors, forgotten_before = window
        return AtomState(
            module_hash=module_hash,
            guid=guid,
            memory_size=int(memory_size),
            memory=tuple((int(o), bytes(d)) for o, d in memory),
            globals=tuple((str(n), str(k), v) for n, k, v in globals_),
            kv={bytes(k): bytes(v) for k, v in kv},
            replies=tuple(record_from(r) for r in replies),
            interrupts=tuple((int(c), bytes(p)) for c, p in interrupts),
            futures=tuple((int(f), int(s), bytes(p)) for f, s, p in futures),
            next_future_id=int(next_future_id),
            generation=int(generation),
            reply_window=(int(entries), float(seconds)),
            reply_floors=tuple((str(c), int(q), int(ms)) for c, q, ms in floors),
            replies_forgotten_before_ms=int(forgotten_before),
        )
    except (ValueError, TypeError, zlib.error, msgpack.UnpackException, msgpack.OutOfData) as exc:
        raise StorageError(f"atom snapshot is damaged: {exc}") from exc
