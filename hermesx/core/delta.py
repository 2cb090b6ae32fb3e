"""Incremental checkpoints: what changed in an atom's state since its last acknowledged one.

See docs/DESIGN.md §6 ("Incremental checkpoints").

A :class:`StateDelta` holds the 4 KiB memory chunks and the KV entries that
changed since a *base* checkpoint, the reply-table records added since (and
how many left its head), and the small parts of the state whole (globals,
mailbox, counters, the reply window). :func:`apply_delta` composes it onto
the base's state; the storesite does so onto its latest checkpoint
(:func:`compose`), the node onto its own copy of the base when a delta is
refused and it sends the whole state instead. The base is named by the
``(age, seq)`` and CRC-32 of the checkpoint it was taken against: a storesite
whose latest checkpoint is another one refuses the delta.

Layout: ``b"HXDELT"``, one format-version byte, then a msgpack array
``[memory_size, chunks, kv_put, kv_delete, replies_dropped, replies_added,
rest]`` where ``rest`` is a snapshot (hermesx.core.snapshot) of the state
without memory, KV and replies, and ``chunks`` a list of ``[offset, data]``.
In format 1 ``data`` is the chunk's 4 KiB; in format 2 (written now) it is the
chunk's 4 KiB when deflate would not make it shorter, else the chunk deflated
(raw deflate, no header: zlib level 1), which inflates to exactly 4 KiB. A
changed chunk is mostly zeros or bytes as they were (a counter's two changed
chunks: 8 KiB → ~190 bytes, ~5 to 10 µs each to deflate, ~3 µs to inflate), so
a delta record fits one LMDB leaf page instead of two overflow pages, and
the commit writes fewer pages (docs/DESIGN.md §6 "Incremental checkpoints"). Both
formats are read: stored chains and older nodes' deltas compose as before.

A delta is checked before any chunk is inflated: its chunks' offsets must be
whole chunks, ascending, apart and inside its memory, and its memory at most
a wasm32 memory (the reader may bound what its chunks decode to tighter). A
deflated chunk of zeros is ~20 bytes, so a delta repeating one offset would
otherwise decode to ~170 times its size.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import msgpack

from hermesx.core.errors import StorageError
from hermesx.core.snapshot import (
    CHUNK,
    AtomState,
    ReplyRecord,
    Shape,
    decode_state,
    encode_state,
    memory_segments,
    record_fields,
    record_from,
)

__all__ = [
    "MAX_MEMORY_BYTES",
    "StateDelta",
    "apply_delta",
    "compose",
    "compose_chain",
    "decode_delta",
    "encode_delta",
    "shape_after",
]

MAGIC = b"HXDELT"
FORMAT_VERSION = 2
# Format 1 sent every chunk whole; its deltas are still read (stored chains, older nodes).
READ_VERSIONS = (1, 2)
_ZERO_CHUNK = bytes(CHUNK)
# Raw deflate (no zlib header or Adler-32: the delta's own CRC-32 covers it), level 1:
# a changed chunk is mostly zeros, which the fastest level already squeezes.
_DEFLATE_LEVEL = 1
_RAW_DEFLATE = -15
_DEFLATE_MISSES = 4
# The largest memory a delta may describe: a wasm32 memory's 65,536 pages of 64 KiB
# (a node's cap, memory_limit_bytes, is its own configuration, unknown to a reader).
MAX_MEMORY_BYTES = 1 << 32


@dataclass(frozen=True, slots=True)
class StateDelta:
    """The change from a base state to a new one (see the module docstring)."""

    memory_size: int
    # (offset, 4 KiB) per memory chunk that differs from the base.
    chunks: tuple[tuple[int, bytes], ...]
    kv_put: tuple[tuple[bytes, bytes], ...]
    kv_delete: tuple[bytes, ...]
    # Records that left the head of the base's reply table, and those added at its end.
    replies_dropped: int
    replies_added: tuple[ReplyRecord, ...]
    # Everything else, whole: memory, kv and replies are empty here.
    rest: AtomState


def encode_delta(delta: StateDelta) -> bytes:
    body: bytes = msgpack.packb(
        [
            delta.memory_size,
            _deflated(delta.chunks),
            [[k, v] for k, v in delta.kv_put],
            list(delta.kv_delete),
            delta.replies_dropped,
            [record_fields(r) for r in delta.replies_added],
            encode_state(delta.rest),
        ],
        use_bin_type=True,
    )
    return MAGIC + bytes([FORMAT_VERSION]) + body


def _deflated(chunks: Sequence[tuple[int, bytes]]) -> list[list[object]]:
    """The chunks as format 2 sends them: each deflated when that is shorter, else as it
    is. After :data:`_DEFLATE_MISSES` chunks deflate did not shorten, the rest go as they
    are: a chunk of random bytes costs ~50 µs to try (a sparse one ~10 µs), and an atom
    whose changed memory does not compress would pay that for every chunk."""
    items: list[list[object]] = []
    misses = 0
    for offset, data in chunks:
        if misses < _DEFLATE_MISSES:
            packed = zlib.compress(data, _DEFLATE_LEVEL, _RAW_DEFLATE)
            if len(packed) < len(data):
                items.append([offset, packed])
                continue
            misses += 1
        items.append([offset, data])
    return items


def _inflated(data: bytes) -> bytes:
    """A chunk of format 2: ``data`` itself when it is a whole chunk, else inflated to
    exactly one chunk (never more: a stream inflating further is damage, not memory)."""
    if len(data) == CHUNK:
        return data
    inflater = zlib.decompressobj(_RAW_DEFLATE)
    chunk = inflater.decompress(data, CHUNK)
    if len(chunk) != CHUNK or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise ValueError(f"a deflated chunk of {len(data)} bytes does not inflate to {CHUNK}")
    return chunk


def decode_delta(data: bytes, max_chunk_bytes: int = MAX_MEMORY_BYTES) -> StateDelta:
    """Parse a delta (format 1 or 2); StorageError when it is not one or is damaged, or
    when its chunks would decode to more than ``max_chunk_bytes`` (checked before any
    chunk is inflated, as the chunks' places: see the module docstring)."""
    header = len(MAGIC) + 1
    if len(data) < header or data[: len(MAGIC)] != MAGIC:
        raise StorageError("not a hermesx checkpoint delta (bad magic)")
    version = data[len(MAGIC)]
    if version not in READ_VERSIONS:
        raise StorageError(
            f"checkpoint delta format {version} is not supported "
            f"(this side reads {', '.join(map(str, READ_VERSIONS))})"
        )
    chunk = _inflated if version == 2 else bytes
    try:
        size, chunks, put, delete, dropped, added, rest = msgpack.unpackb(
            memoryview(data)[header:], raw=False, strict_map_key=False
        )
        memory_size = int(size)
        offsets = [int(o) for o, _ in chunks]
        _check_places(memory_size, offsets, max_chunk_bytes)
        return StateDelta(
            memory_size=memory_size,
            chunks=tuple((o, chunk(d)) for o, (_, d) in zip(offsets, chunks, strict=True)),
            kv_put=tuple((bytes(k), bytes(v)) for k, v in put),
            kv_delete=tuple(bytes(k) for k in delete),
            replies_dropped=int(dropped),
            replies_added=tuple(record_from(r) for r in added),
            rest=decode_state(bytes(rest)),
        )
    except (ValueError, TypeError, zlib.error, msgpack.UnpackException) as exc:
        raise StorageError(f"checkpoint delta is damaged: {exc}") from exc


def _check_places(memory_size: int, offsets: Sequence[int], max_chunk_bytes: int) -> None:
    """StorageError unless the chunks at ``offsets`` each fill a chunk of a memory of
    ``memory_size`` bytes (at most :data:`MAX_MEMORY_BYTES`), ascending and apart, and
    are at most ``max_chunk_bytes`` in all: then a delta decodes to at most its memory."""
    if not 0 <= memory_size <= MAX_MEMORY_BYTES:
        raise StorageError(
            f"checkpoint delta is for a memory of {memory_size} bytes; "
            f"a wasm32 memory has 0 to {MAX_MEMORY_BYTES}"
        )
    if len(offsets) * CHUNK > max_chunk_bytes:
        raise StorageError(
            f"checkpoint delta has {len(offsets)} chunks ({len(offsets) * CHUNK} bytes), "
            f"over the limit of {max_chunk_bytes} bytes"
        )
    end = 0  # where the previous chunk ends
    for offset in offsets:
        if offset % CHUNK or offset < end or offset + CHUNK > memory_size:
            raise StorageError(
                f"checkpoint delta has a chunk out of place (at {offset}, after one ending at "
                f"{end}, in a memory of {memory_size} bytes): chunks are whole, ascending "
                "and apart"
            )
        end = offset + CHUNK


def _check_fit(delta: StateDelta, memory_size: int, replies: int) -> None:
    """StorageError unless ``delta`` fits a base of ``memory_size`` bytes and ``replies``."""
    guid = delta.rest.guid
    if delta.memory_size != memory_size:
        raise StorageError(
            f"checkpoint delta of atom {guid} is for a memory of "
            f"{delta.memory_size} bytes; its base has {memory_size}"
        )
    for offset, data in delta.chunks:
        if offset % CHUNK or len(data) != CHUNK or offset + CHUNK > memory_size:
            raise StorageError(
                f"checkpoint delta of atom {guid} has a chunk out of place "
                f"({len(data)} bytes at {offset} of {memory_size})"
            )
    if delta.replies_dropped > replies:
        raise StorageError(
            f"checkpoint delta of atom {guid} drops {delta.replies_dropped} "
            f"replies of a table of {replies}"
        )


def shape_after(shape: Shape, delta: StateDelta) -> Shape:
    """The shape of the state ``delta`` makes of a state of ``shape``; StorageError when
    it does not fit that state (exactly when :func:`compose` would refuse it)."""
    _check_same(shape.guid, shape.module_hash, delta)
    _check_fit(delta, shape.memory_size, shape.replies)
    replies = shape.replies - delta.replies_dropped + len(delta.replies_added)
    return Shape(shape.guid, shape.module_hash, delta.memory_size, replies)


def _check_same(guid: str, module_hash: str, delta: StateDelta) -> None:
    if guid != delta.rest.guid or module_hash != delta.rest.module_hash:
        raise StorageError(
            f"checkpoint delta of atom {delta.rest.guid} (module {delta.rest.module_hash[:12]}) "
            f"does not fit the stored state of atom {guid}"
        )


def _composed(
    delta: StateDelta,
    memory: tuple[tuple[int, bytes], ...],
    kv: dict[bytes, bytes],
    replies: tuple[ReplyRecord, ...],
) -> AtomState:
    """The new state: ``memory`` as given, the base's ``kv`` (changed in place) and replies."""
    for key in delta.kv_delete:
        kv.pop(key, None)
    kv.update(delta.kv_put)
    return replace(
        delta.rest,
        memory_size=delta.memory_size,
        memory=memory,
        kv=kv,
        replies=replies[delta.replies_dropped :] + delta.replies_added,
    )


def apply_delta(
    memory: bytearray,
    kv: dict[bytes, bytes],
    replies: tuple[ReplyRecord, ...],
    delta: StateDelta,
) -> AtomState:
    """The state ``delta`` makes of a base whose memory, KV and replies are given.

    ``memory`` and ``kv`` are changed in place (pass copies to keep the base).
    StorageError when the delta does not fit the base (another memory size, a
    chunk out of place, more replies dropped than there are).
    """
    _check_fit(delta, len(memory), len(replies))
    for offset, data in delta.chunks:
        memory[offset : offset + CHUNK] = data
    return _composed(delta, memory_segments(memory), kv, replies)


def compose(base: AtomState, delta: StateDelta) -> AtomState:
    """The state ``delta`` makes of ``base`` (the storesite's side of a delta).

    The base's memory runs are spliced, not rebuilt: a changed chunk inside a
    run replaces its bytes there (a chunk turned zero stays in the run as
    zeros), one outside every run becomes a run of its own when it is not
    zero. The runs stay sorted and apart, so the snapshot restores the same
    memory, at the cost of copying only the runs a delta touches (rebuilding
    all runs of a 16 MiB memory took ~20 times longer).
    """
    _check_same(base.guid, base.module_hash, delta)
    _check_fit(delta, base.memory_size, len(base.replies))
    starts = [offset for offset, _ in base.memory]
    edited: dict[int, bytearray] = {}
    added: list[tuple[int, bytes]] = []
    for offset, data in delta.chunks:
        index = bisect.bisect_right(starts, offset) - 1
        if index >= 0 and offset < starts[index] + len(base.memory[index][1]):
            start, run = base.memory[index]
            if offset + CHUNK > start + len(run):  # a run not made of whole chunks
                return apply_delta(_memory_of(base), dict(base.kv), base.replies, delta)
            buffer = edited.get(index)
            if buffer is None:
                buffer = edited[index] = bytearray(run)
            buffer[offset - start : offset - start + CHUNK] = data
        elif data != _ZERO_CHUNK:
            added.append((offset, data))
    runs = [
        (offset, bytes(edited[index]) if index in edited else run)
        for index, (offset, run) in enumerate(base.memory)
    ]
    if added:
        runs = sorted(runs + added)
    return _composed(delta, tuple(runs), dict(base.kv), base.replies)


def compose_chain(base: AtomState, deltas: Sequence[StateDelta]) -> AtomState:
    """The state ``deltas``, one after the other, make of ``base``: the same as
    composing them one at a time, but each memory chunk, KV entry and reply is
    copied once (a storesite reads a chain of delta records so, storesite.chain).
    StorageError when a delta does not fit the state the ones before it made."""
    if len(deltas) <= 1:
        return compose(base, deltas[0]) if deltas else base
    shape = Shape(base.guid, base.module_hash, base.memory_size, len(base.replies))
    chunks: dict[int, bytes] = {}
    ops: dict[bytes, bytes | None] = {}
    added: list[ReplyRecord] = []
    dropped = 0
    for delta in deltas:
        shape = shape_after(shape, delta)
        chunks.update(delta.chunks)
        ops.update(dict.fromkeys(delta.kv_delete))
        ops.update(delta.kv_put)
        added.extend(delta.replies_added)
        dropped += delta.replies_dropped  # always from the head of the table
    kv = dict(base.kv)
    for key, value in ops.items():
        if value is None:
            kv.pop(key, None)
        else:
            kv[key] = value
    last = deltas[-1]
    memory = StateDelta(last.memory_size, tuple(sorted(chunks.items())), (), (), 0, (), last.rest)
    return replace(compose(base, memory), kv=kv, replies=(base.replies + tuple(added))[dropped:])


def _memory_of(state: AtomState) -> bytearray:
    memory = bytearray(state.memory_size)
    for offset, data in state.memory:
        memory[offset : offset + len(data)] = data
    return memory
