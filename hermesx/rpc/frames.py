"""The call channel's frames: layout, limits, encoding and checking (docs/DESIGN.md §4.1).

Every frame on the channel, both ways, is a 4-byte big-endian unsigned length
``L`` followed by ``L`` bytes (1 <= L <= the receiver's frame limit) holding
one msgpack array:

* request ``[0, id, kind, timeout_s, body]`` or ``[0, id, kind, timeout_s, body, meta]``
  — ``id`` a positive integer unique among the sender's calls in flight on
  this connection, ``kind`` the request kind (``"invoke"``, ``"send"``, …),
  ``timeout_s`` the seconds the caller still waits (its deadline, relative,
  so the two clocks need not agree), ``body`` bytes for the kind's handler,
  ``meta`` an optional map of text to text (a trace context, …) that
  receivers pass on and otherwise ignore;
* reply ``[1, id, body]``;
* error ``[2, id, error_kind, message]`` — a :class:`HermesError` of that kind
  (:func:`hermesx.core.errors.error_from_wire`); with ``id`` 0 it is about the
  connection, sent just before the sender closes it.

Replies come in any order. A frame that breaks these rules ends the
connection (:class:`FrameError` names what was wrong).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import msgpack

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "ERROR",
    "HEADER",
    "MAX_TIMEOUT_S",
    "REPLY",
    "REQUEST",
    "Error",
    "FrameError",
    "FrameReader",
    "Reply",
    "Request",
    "encode_error",
    "encode_reply",
    "encode_request",
]

HEADER = struct.Struct("!I")
REQUEST, REPLY, ERROR = 0, 1, 2
# A payload is at most 4 MiB (NodeConfig.max_payload_bytes); room for the
# rest of a request and for a reply's trace.
DEFAULT_MAX_FRAME_BYTES = 8 * 2**20
MAX_KIND_LEN = 64
MAX_META_ENTRIES = 16
# A request's timeout_s is above 0 and below this (~115 days).
MAX_TIMEOUT_S = 1e7
_ID_LIMIT = 2**63
_NUMBER = (int, float)


class FrameError(Exception):
    """A frame broke the channel's rules; the connection ends (the message says why)."""


# Named tuples, not dataclasses: one is made per frame, and a tuple is made in a
# fraction of a frozen dataclass's time.
class Request(NamedTuple):
    """``[0, id, kind, timeout_s, body(, meta)]``."""

    id: int
    kind: str
    timeout: float
    body: bytes
    meta: Mapping[str, str] | None = None


class Reply(NamedTuple):
    """``[1, id, body]``."""

    id: int
    body: bytes


class Error(NamedTuple):
    """``[2, id, error_kind, message]``."""

    id: int
    kind: str
    message: str


Frame = Request | Reply | Error
# A named tuple's own constructor is a Python function; the frames read are made
# with tuple's, a C call (one Python frame less per frame, on both sides).
_new: Callable[[type[Frame], tuple[Any, ...]], Frame] = tuple.__new__

_pack = msgpack.Packer(use_bin_type=True).pack


def _framed(obj: Any) -> bytes:
    data: bytes = _pack(obj)
    return HEADER.pack(len(data)) + data


def encode_request(
    id: int, kind: str, timeout: float, body: bytes, meta: Mapping[str, str] | None = None
) -> bytes:
    if meta:
        return _framed([REQUEST, id, kind, float(timeout), body, dict(meta)])
    data: bytes = _pack([REQUEST, id, kind, float(timeout), body])  # (one call less per call)
    return HEADER.pack(len(data)) + data


def encode_reply(id: int, body: bytes) -> bytes:
    data: bytes = _pack([REPLY, id, body])  # (as _framed does, one call less per reply)
    return HEADER.pack(len(data)) + data


def encode_error(id: int, kind: str, message: str) -> bytes:
    return _framed([ERROR, id, kind, message])


class FrameReader:
    """Cuts a byte stream into frames; refuses a frame over ``max_frame`` before reading it."""

    __slots__ = ("_buffer", "_start", "max_frame", "whole")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._start = 0  # where the frames not taken yet begin
        # Where the next frame ends in the buffer once it is all there (None: not yet):
        # whether :meth:`take` has a frame to give.
        self.whole: int | None = None

    @property
    def pending(self) -> int:
        """Bytes received that are not in a frame taken yet."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes) -> list[Frame]:
        """The whole frames ``data`` completes, in order; :class:`FrameError` for a bad one."""
        self.add(data)
        frames: list[Frame] = []
        while (frame := self.take()) is not None:
            frames.append(frame)
        return frames

    def add(self, data: bytes | bytearray | memoryview) -> None:
        """Keep ``data`` to cut into frames with :meth:`take`; a frame announced over the
        limit is refused at once."""
        if self._start:  # what was taken leaves the buffer before more comes
            del self._buffer[: self._start]
            if self.whole is not None:
                self.whole -= self._start
            self._start = 0
        self._buffer += data
        if self.whole is None:
            self.whole = self._whole()

    def take(self) -> Frame | None:
        """The next whole frame received, if there is one (the frames one :meth:`add`
        completes can be taken one at a time: the reader holds the rest as bytes)."""
        end = self.whole
        if end is None:
            return None
        buffer = self._buffer
        frame = _decode(buffer[self._start + 4 : end])
        if end == len(buffer):  # the usual case: one read, one frame
            buffer.clear()
            self._start = 0
            self.whole = None
        else:
            self._start = end
            self.whole = self._whole()
        return frame

    def _whole(self) -> int | None:
        """Where the next frame ends in the buffer, once it is all there."""
        start = self._start
        if len(self._buffer) - start < 4:
            return None
        (size,) = HEADER.unpack_from(self._buffer, start)
        if size == 0 or size > self.max_frame:
            raise FrameError(
                f"a frame announcing {size} bytes (the limit is {self.max_frame})"
                if size
                else "an empty frame"
            )
        end = start + 4 + size
        return end if end <= len(self._buffer) else None


def _decode(data: bytes | bytearray) -> Frame:
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise FrameError(f"a frame that is not msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, list) or len(obj) < 3 or not isinstance(obj[1], int):
        raise FrameError("a frame that is not [type, id, ...]")
    tag, id = obj[0], obj[1]
    if id < 0 or id >= _ID_LIMIT:
        raise FrameError(f"a frame with request id {id} out of range")
    fields = len(obj)
    if tag == REQUEST and (fields == 5 or fields == 6):
        kind, timeout, body = obj[2], obj[3], obj[4]
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_LEN:
            raise FrameError("a request whose kind is not a short text")
        if not isinstance(timeout, _NUMBER) or not 0 < timeout < MAX_TIMEOUT_S:
            raise FrameError(f"request {id} ({kind[:MAX_KIND_LEN]}): timeout {timeout!r} invalid")
        if not isinstance(body, bytes):
            raise FrameError(f"request {id} ({kind}): its body is not bytes")
        meta = obj[5] if fields == 6 else None
        if meta is not None and not _is_meta(meta):
            raise FrameError(f"request {id} ({kind}): its meta is not a small map of text")
        if id == 0:
            raise FrameError(f"request ({kind}) with id 0")
        return _new(Request, (id, kind, float(timeout), body, meta))
    if tag == REPLY and len(obj) == 3 and isinstance(obj[2], bytes):
        return _new(Reply, (id, obj[2]))
    if tag == ERROR and len(obj) == 4 and isinstance(obj[2], str) and isinstance(obj[3], str):
        return Error(id, obj[2], obj[3])
    raise FrameError(f"a frame of unknown shape (type {str(tag)[:20]!r}, {fields} fields)")


def _is_meta(meta: Any) -> bool:
    return (
        isinstance(meta, dict)
        and len(meta) <= MAX_META_ENTRIES
        and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    )
