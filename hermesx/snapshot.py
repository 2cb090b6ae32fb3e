"""Versioned snapshot format of an atom's state (DESIGN.md §3, §5, §6).

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
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from hermesx.errors import StorageError

__all__ = [
    "FORMAT_VERSION",
    "AtomState",
    "ReplyRecord",
    "decode_state",
    "encode_state",
    "memory_segments",
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
    # it remembers of replies that left it (hermesx.replies): per client
    # (client, highest seq, highest issued ms), and the forgotten-before mark.
    reply_window: tuple[int, float] = (1024, 0.0)
    reply_floors: tuple[tuple[str, int, int], ...] = ()
    replies_forgotten_before_ms: int = 0


# Zero runs are found in 4 KiB chunks, not whole 64 KiB wasm pages: a small
# atom's pages are mostly zero around a little data and stack, and a counter's
# snapshot shrinks from ~130 KB to a few KB, which every checkpoint, move and
# activation pays for.
CHUNK = 4096


def memory_segments(memory: bytes) -> tuple[tuple[int, bytes], ...]:
    """Runs of consecutive non-zero 4 KiB chunks of ``memory``."""
    zero = bytes(CHUNK)
    runs: list[tuple[int, bytes]] = []
    start = -1
    size = len(memory)
    view = memoryview(memory)
    for offset in range(0, size, CHUNK):
        end = min(offset + CHUNK, size)
        is_zero = view[offset:end] == zero[: end - offset]
        if is_zero and start >= 0:
            runs.append((start, bytes(view[start:offset])))
            start = -1
        elif not is_zero and start < 0:
            start = offset
    if start >= 0:
        runs.append((start, bytes(view[start:size])))
    return tuple(runs)


def encode_state(state: AtomState, *, compress: bool = False) -> bytes:
    body: bytes = msgpack.packb(
        [
            state.module_hash,
            state.guid,
            state.memory_size,
            [[offset, data] for offset, data in state.memory],
            [[name, kind, value] for name, kind, value in state.globals],
            [[k, v] for k, v in state.kv.items()],
            [[r.request_id, r.error_kind, r.payload, r.recorded_ms] for r in state.replies],
            [[code, payload] for code, payload in state.interrupts],
            [[fid, status, payload] for fid, status, payload in state.futures],
            state.next_future_id,
            state.generation,
            [
                state.reply_window[0],
                state.reply_window[1],
                [[c, seq, ms] for c, seq, ms in state.reply_floors],
                state.replies_forgotten_before_ms,
            ],
        ],
        use_bin_type=True,
    )
    flags = 0
    if compress:
        body = zlib.compress(body, 1)
        flags |= FLAG_ZLIB
    return MAGIC + bytes([FORMAT_VERSION, flags]) + body


def decode_state(data: bytes) -> AtomState:
    """Parse a snapshot; StorageError when it is not one or is damaged."""
    header = len(MAGIC) + 2
    if len(data) < header or data[: len(MAGIC)] != MAGIC:
        raise StorageError("not a hermesx atom snapshot (bad magic)")
    version, flags = data[len(MAGIC)], data[len(MAGIC) + 1]
    if version != FORMAT_VERSION:
        raise StorageError(
            f"atom snapshot format {version} is not supported (this runtime reads {FORMAT_VERSION})"
        )
    body = data[header:]
    try:
        if flags & FLAG_ZLIB:
            body = zlib.decompress(body)
        fields = msgpack.unpackb(body, raw=False, strict_map_key=False)
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
            replies=tuple(
                ReplyRecord(str(r[0]), str(r[1]), bytes(r[2]), int(r[3]) if len(r) > 3 else 0)
                for r in replies
            ),
            interrupts=tuple((int(c), bytes(p)) for c, p in interrupts),
            futures=tuple((int(f), int(s), bytes(p)) for f, s, p in futures),
            next_future_id=int(next_future_id),
            generation=int(generation),
            reply_window=(int(entries), float(seconds)),
            reply_floors=tuple((str(c), int(q), int(ms)) for c, q, ms in floors),
            replies_forgotten_before_ms=int(forgotten_before),
        )
    except (ValueError, TypeError, zlib.error, msgpack.UnpackException) as exc:
        raise StorageError(f"atom snapshot is damaged: {exc}") from exc
