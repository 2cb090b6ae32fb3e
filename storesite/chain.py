"""Checkpoint records: whole snapshots, and deltas kept as they came, composed when read.

See docs/DESIGN.md §6 ("Records", "Incremental checkpoints").

A slot of the ``checkpoints`` sub-database holds one of two records, told
apart by the length of their msgpack array:

- a *whole* record, ``[node, age, seq, snapshot, crc32, generation]`` (six
  items; the format every store has written since format 2);
- a *delta* record, ``[node, age, seq, link, delta, crc32, generation]``
  (seven items): the :class:`~hermesx.core.delta.StateDelta` bytes the node
  sent, their CRC-32, and a :class:`Link` to what they compose onto: the
  previous slot, back to the whole record the chain starts from (its
  *anchor*).

A delta record is what makes a durable call's write proportional to what the
call changed: storing a composed whole snapshot cost a decode, a compose, an
encode and a CRC of the whole state (its reply table alone is 1,024 records)
and wrote every page of it. A chain is read back — restore, move, home move,
``GetCheckpoint`` — by composing its deltas onto the anchor's snapshot, so
no reader ever sees a delta; it is cut (the next checkpoint written whole,
composed at the storesite) once :data:`MAX_CHAIN` deltas, or deltas decoding
to more bytes than the anchor's (and at least :data:`CHAIN_BYTES_FLOOR`), hang
on one anchor: a delta of format 2 is counted as its chunks decode
(:func:`decoded_size`), not as the deflated bytes it is stored as, so that a
chain of well-compressing deltas does not grow to :data:`MAX_CHAIN` links
each decoded on every read.

Each record's CRC-32 covers the bytes it stores and is checked on every
read, so a damaged link makes every checkpoint composed through it damaged,
never wrongly restored. A delta checkpoint is named to the node (the base of
its next delta) by ``crc32(delta, base's name)``: the CRC of the delta
continued from its base's name, a whole record's name being its CRC.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

from hermesx.core.errors import CheckpointDamagedError
from hermesx.core.identity import TAD
from hermesx.core.snapshot import CHUNK, Shape, verify_checksum

__all__ = [
    "CHAIN_BYTES_FLOOR",
    "MAX_CHAIN",
    "Link",
    "Record",
    "decoded_size",
    "pack_delta",
    "pack_whole",
    "unpack_record",
]

# Deltas on one anchor before the next checkpoint is written whole: bounds what a
# read composes and how much a damaged anchor takes with it.
MAX_CHAIN = 64
# A chain's deltas may always decode to this many bytes, and beyond it up to its
# anchor's size: a small state is rewritten whole rarely, a large one never twice.
CHAIN_BYTES_FLOOR = 1 << 20


@dataclass(frozen=True, slots=True)
class Link:
    """Where a delta record hangs: its chain's anchor and what it composes to."""

    anchor: int  # slot of the whole record the chain starts from
    name: int  # the checkpoint's name: crc32(delta, the base's name)
    shape: Shape  # of the state the chain composes to, up to this delta
    length: int  # deltas from the anchor to this one, this one included
    size: int  # what they decode to (decoded_size; links stored before it: their bytes)
    anchor_size: int  # bytes of the anchor's snapshot

    def due_whole(self) -> bool:
        """Whether the next checkpoint on this one is written whole (the chain is long)."""
        return self.length >= MAX_CHAIN or self.size > max(self.anchor_size, CHAIN_BYTES_FLOOR)

    def to_list(self) -> list[object]:
        s = self.shape
        shape = [s.guid, s.module_hash, s.memory_size, s.replies]
        return [self.anchor, self.name, shape, self.length, self.size, self.anchor_size]

    @classmethod
    def from_list(cls, raw: Any) -> Link:
        anchor, name, shape, length, size, anchor_size = raw
        guid, module_hash, memory_size, replies = shape
        return cls(
            int(anchor),
            int(name),
            Shape(str(guid), str(module_hash), int(memory_size), int(replies)),
            int(length),
            int(size),
            int(anchor_size),
        )


@dataclass(frozen=True, slots=True)
class Record:
    """One slot's record, its CRC checked: a whole snapshot (``link`` None) or a delta."""

    number: int
    tad: TAD
    seq: int
    data: bytes  # the snapshot, or the delta
    checksum: int  # CRC-32 of ``data``
    generation: int
    link: Link | None = None

    @property
    def name(self) -> int:
        """The checkpoint's name: the base a node's next delta names."""
        return self.checksum if self.link is None else self.link.name

    def next_link(self, delta: bytes, chunks: int, shape: Shape) -> Link:
        """The link of a delta record of ``delta`` (of ``chunks`` memory chunks) on this
        one, composing to ``shape``."""
        name = zlib.crc32(delta, self.name) & 0xFFFFFFFF
        size = decoded_size(delta, chunks)
        if self.link is None:
            return Link(self.number, name, shape, 1, size, len(self.data))
        link = self.link
        return Link(link.anchor, name, shape, link.length + 1, link.size + size, link.anchor_size)


def decoded_size(delta: bytes, chunks: int) -> int:
    """What a delta of ``chunks`` memory chunks decodes to, counted without inflating it:
    its bytes, or its chunks' 4 KiB each when that is more (format 2 stores them
    deflated). At least half of what it decodes to: its bytes hold every part whole but
    the chunks."""
    return max(len(delta), chunks * CHUNK)


def pack_whole(tad: TAD, seq: int, snapshot: bytes, checksum: int, generation: int) -> bytes:
    packed: bytes = msgpack.packb(
        [tad.node, tad.age, seq, snapshot, checksum, generation], use_bin_type=True
    )
    return packed


def pack_delta(
    tad: TAD, seq: int, link: Link, delta: bytes, checksum: int, generation: int
) -> bytes:
    packed: bytes = msgpack.packb(
        [tad.node, tad.age, seq, link.to_list(), delta, checksum, generation], use_bin_type=True
    )
    return packed


def unpack_record(guid: str, data: bytes, number: int) -> Record:
    """The record of slot ``number``, its CRC checked; CheckpointDamagedError if damaged."""
    what = f"checkpoint #{number} of atom {guid}"
    try:
        fields = msgpack.unpackb(data, raw=False)
        link: Link | None = None
        if len(fields) == 7:
            node, age, seq, raw_link, payload, checksum, generation = fields
            link = Link.from_list(raw_link)
        else:
            node, age, seq, payload, checksum, generation = fields
        tad = TAD(str(node), int(age))
        seq, checksum, generation = int(seq), int(checksum), int(generation)
        payload = bytes(payload)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CheckpointDamagedError(
            f"{what} is damaged: its record cannot be read ({exc})"
        ) from exc
    verify_checksum(payload, checksum, f"{what} ({tad} seq {seq})")
    return Record(number, tad, seq, payload, checksum, generation, link)
