"""An atom's reply table and its window (docs/DESIGN.md §4: a retried call never runs twice).

Every invocation carries a request id. The atom keeps the first outcome of
each recent id; a retry of a kept id gets that outcome again instead of
running the call a second time. The table is bounded by its *reply window*:
at most ``entries`` replies (default 1,024), and, when ``seconds`` is set,
none older than that. The window is chosen per atom at creation
(``hermesx create --reply-window 4096,600s``) and travels with the atom's
state through moves, checkpoints and recoveries.

A retry whose reply has left the window must not run again, so the atom has
to tell an old id from a new one. Ids made by hermesx clients carry what it
needs::

    hx1.<client>.<seq>.<issued_ms>

``client`` is 16 lowercase hex digits chosen at random by each client
(every ``Client``, and every node for its atoms' calls), ``seq`` counts that
client's calls from 1, and ``issued_ms`` is the client's wall clock (Unix
milliseconds) when the id was made. When a reply leaves the window the atom
keeps, per client, the highest ``seq`` and ``issued_ms`` it dropped (the
client's *floor*). A request not in the table is then refused with
``request_expired`` when its ``seq`` is at or below its client's floor.
Floors are bounded too (as many clients as the window has entries, at
least :data:`MIN_FLOOR_CLIENTS`; least recently touched dropped first);
when a client's floor is dropped its ``issued_ms`` raises the table's
*forgotten-before* mark, and a request of a client without a floor is
refused when it was issued at or before that mark.

Soundness: a call that ran was recorded; if its reply is gone it was evicted,
so its client's floor covers its ``seq``, or that floor was dropped and the
mark covers its ``issued_ms``. Clock skew only matters for a client the atom
has no floor for, and only when its clock runs behind by more than the age
of the replies the atom forgot (at least one full window of calls, then as
many other clients' evictions): such a new call is refused, never run
twice, and the refusal names the mark. A hermesx client refused so at the
id's first transmission (so the call never ran) moves its id clock past the
mark and sends the call again under a new id. A refused id is refused for
good: retry a call with a new id only when you know it did not run.
The floor an evicted reply raises comes from its own id's parts: parsed at
the id's lookup and kept with the reply (a cache of that parse; an id recorded
without a lookup, or restored from a snapshot, is parsed when it leaves).

Any other id (a UUID from another language through gRPC ``Invoke``, an
``Idempotency-Key``) is accepted as it is: it gets its first reply back while
the reply is in the window, but once it has left the window the atom cannot
tell the retry from a new call and runs it. Callers that need exactly-once
beyond the window send ids of the form above.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import NamedTuple

import xxhash

from hermesx.core.errors import ConfigurationError, RequestExpiredError
from hermesx.core.snapshot import ReplyRecord

__all__ = [
    "DEFAULT_REPLY_ENTRIES",
    "MIN_FLOOR_CLIENTS",
    "ReplyMark",
    "ReplyTable",
    "ReplyWindow",
    "RequestIds",
    "call_digest",
    "parse_reply_window",
    "parse_request_id",
]

DEFAULT_REPLY_ENTRIES = 1024
MAX_REPLY_ENTRIES = 65536
# Clients whose floors an atom keeps at least (about 30 bytes each in every
# snapshot; an atom keeps as many as its window has entries, if more).
MIN_FLOOR_CLIENTS = 256
# The replies' payloads and ids, at most (the table moves and checkpoints with the atom).
REPLY_TABLE_MAX_BYTES = 8 * 2**20
# A request id is a key of the table, kept in every checkpoint: a short one.
MAX_REQUEST_ID_CHARS = 128
# How far ahead of the atom's clock an id may say it was issued. Ids of
# replies that leave the window raise the forgotten-before mark to their issue
# time, so an id from far in the future (a wrong clock, or a forged id) would
# make every other client's new ids look old, and, once they caught up, push
# their ids past the floors of what already ran.
MAX_ISSUED_AHEAD_MS = 5 * 60 * 1000

_MARK = re.compile(r"issued at or before ([0-9]{1,15}) ms")
_STRUCTURED = re.compile(r"hx1\.([0-9a-f]{16})\.([1-9][0-9]{0,17})\.([0-9]{1,15})")


class RequestId(NamedTuple):
    # A tuple, not a frozen dataclass: ids are parsed on every call's way in
    # and out of the reply table, and a tuple is made several times faster.
    client: str
    seq: int
    issued_ms: int


def parse_request_id(text: str) -> RequestId | None:
    """The parts of a hermesx request id, or None for an id of any other form."""
    parts = _parse(text)
    # tuple.__new__ directly: a NamedTuple's own __new__ is a Python function.
    return None if parts is None else _new_tuple(RequestId, parts)


def _parse(text: str) -> tuple[str, int, int] | None:
    """``(client, seq, issued_ms)`` of a hermesx request id, None for any other id."""
    match = _match_structured(text)
    if match is None:
        return None
    client, seq, issued_ms = match.groups()
    return client, int(seq), int(issued_ms)


_match_structured = _STRUCTURED.fullmatch
# A parsed id's issue time (15 digits at most: under 2**50) and seq in one int.
_ISSUED_BITS = 50
_ISSUED_MASK = (1 << _ISSUED_BITS) - 1
_new_tuple = tuple.__new__


class RequestIds:
    """Makes one client's request ids: ``hx1.<client>.<seq>.<issued_ms>``."""

    def __init__(self) -> None:
        self.client = secrets.token_hex(8)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        # Added to our clock once an atom showed it runs behind (never lowered).
        self._offset_ms = 0

    def next(self) -> str:
        with self._lock:
            seq = next(self._seq)
            offset = self._offset_ms
        return f"hx1.{self.client}.{seq}.{_now_ms() + offset}"

    def catch_up(self, refusal: str) -> bool:
        """Move our clock past the forgotten-before mark an atom refused an id with.

        Only for an id whose refusal came at its first transmission (so it
        never ran); False when ``refusal`` names no mark.
        """
        match = _MARK.search(refusal)
        if match is None:
            return False
        with self._lock:
            self._offset_ms = max(self._offset_ms, int(match.group(1)) + 1 - _now_ms())
        return True


@dataclass(frozen=True, slots=True)
class ReplyWindow:
    """How many replies an atom keeps, and (``seconds`` > 0) for how long at most."""

    entries: int = DEFAULT_REPLY_ENTRIES
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.entries <= MAX_REPLY_ENTRIES:
            raise ConfigurationError(
                f"reply window of {self.entries} entries is not between 1 and {MAX_REPLY_ENTRIES}"
            )
        if not math.isfinite(self.seconds) or self.seconds < 0:
            raise ConfigurationError(
                f"reply window of {self.seconds} seconds must be positive (0: no age limit)"
            )

    def __str__(self) -> str:
        return f"{self.entries},{self.seconds:g}s" if self.seconds else str(self.entries)


def parse_reply_window(text: str) -> ReplyWindow:
    """``ENTRIES``, ``SECONDSs`` or both, comma-separated: ``4096``, ``600s``, ``4096,600s``."""
    entries, seconds = DEFAULT_REPLY_ENTRIES, 0.0
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or len(parts) > 2:
        raise ConfigurationError(
            f"reply window {text!r} is not ENTRIES, SECONDSs or ENTRIES,SECONDSs (e.g. 4096,600s)"
        )
    seen: set[str] = set()
    for part in parts:
        try:
            if part.endswith("s"):
                kind, seconds = "seconds", float(part[:-1])
                if not (seconds > 0 and math.isfinite(seconds)):
                    raise ValueError
            else:
                kind, entries = "entries", int(part)
        except ValueError:
            raise ConfigurationError(
                f"reply window {text!r}: {part!r} is neither a count of entries nor a "
                "positive number of seconds such as 600s"
            ) from None
        if kind in seen:
            raise ConfigurationError(f"reply window {text!r} names its {kind} twice")
        seen.add(kind)
    return ReplyWindow(entries, seconds)


class ReplyMark(NamedTuple):
    """Where a reply table stood: what :meth:`ReplyTable.changes` tells changes since."""

    # Which run of the table's history: a new one after a restore or an id recorded again.
    epoch: int
    recorded: int
    evicted: int
    length: int


# Epochs are drawn from one counter, so no two tables (or runs of one) share one.
_EPOCHS = itertools.count(1)


@dataclass(slots=True)
class _Floor:
    seq: int
    issued_ms: int


class ReplyTable:
    """The first outcome of each recent request id, bounded by the atom's reply window.

    Thread-safe: a call looks its id up before it queues for the atom, while
    the atom's running call records its own.
    """

    def __init__(self, window: ReplyWindow | None = None) -> None:
        self._lock = threading.Lock()
        self.window = window or ReplyWindow()
        self._replies: OrderedDict[str, ReplyRecord] = OrderedDict()
        # Bytes of the replies and ids held (what the table counts toward the memory cap).
        self.payload_bytes = 0
        self._floors: OrderedDict[str, _Floor] = OrderedDict()
        self.forgotten_before_ms = 0
        # Counts the outcomes recorded (and restores). A lookup that found an
        # id new still holds while this is unchanged: evictions alone never
        # make a new id one that ran. The runtime reads it before its first
        # look and skips the second (after waiting for the atom) when it
        # stayed the same.
        self.recorded = 0
        # Records dropped from the head; with ``recorded`` and the epoch, what
        # changes() tells a checkpoint without copying the table.
        self._evicted = 0
        self._epoch = next(_EPOCHS)
        # The seq and issue time of each held hermesx id, kept from its lookup to
        # its eviction so that the id is parsed once, not again when it leaves for
        # its client's floor (its client is then its characters 4 to 20). A cache
        # of a pure function of the id: a held id missing here (restored, recorded
        # without a lookup, not a hermesx id) is parsed at its eviction. Holds only
        # held ids; one int each (seq << 50 | issued_ms), about 80 bytes a reply.
        self._parts: dict[str, int] = {}
        # The last id lookup() parsed and its packed parts: record() of it takes them.
        self._last_id = ""
        self._last_parts = -1

    def __len__(self) -> int:
        return len(self._replies)

    def records(self) -> tuple[ReplyRecord, ...]:
        with self._lock:
            return tuple(self._replies.values())

    def changes(self, mark: ReplyMark | None) -> tuple[ReplyMark, int, tuple[ReplyRecord, ...]]:
        """What changed since ``mark`` (an earlier answer of this table): the mark of now,
        how many records left the head, and the records added at the end since.

        Costs what changed, not the table (a checkpoint's delta, docs/DESIGN.md §6). With
        ``mark`` None, or when the table did more than move on since (it was restored, or
        an id recorded again left its place), the count is -1 and the records are all of
        them: the table is sent whole.
        """
        with self._lock:
            replies = self._replies
            now = ReplyMark(self._epoch, self.recorded, self._evicted, len(replies))
            if mark is None or mark.epoch != now.epoch:
                return now, -1, tuple(replies.values())
            added = now.recorded - mark.recorded
            if added >= len(replies):  # every record held came since: the old ones all left
                return now, mark.length, tuple(replies.values())
            if not added:
                return now, now.evicted - mark.evicted, ()
            newest = itertools.islice(reversed(replies.values()), added)
            return now, now.evicted - mark.evicted, tuple(newest)[::-1]

    def floors(self) -> tuple[tuple[str, int, int], ...]:
        with self._lock:
            return tuple((c, f.seq, f.issued_ms) for c, f in self._floors.items())

    def restore(
        self,
        window: ReplyWindow,
        records: tuple[ReplyRecord, ...],
        floors: tuple[tuple[str, int, int], ...],
        forgotten_before_ms: int,
    ) -> None:
        with self._lock:
            self.window = window
            self._replies = OrderedDict((r.request_id, r) for r in records)
            self.payload_bytes = sum(_size(r) for r in records)
            self._floors = OrderedDict((c, _Floor(s, ms)) for c, s, ms in floors)
            self.forgotten_before_ms = forgotten_before_ms
            self._parts = {}
            self.recorded += 1
            self._epoch = next(_EPOCHS)

    def lookup(
        self, request_id: str, method: str = "", guid: str = "", args: bytes | None = None
    ) -> ReplyRecord | None:
        """The first outcome of ``request_id``; None when it is new (it may run).

        Raises RequestExpiredError when the id may have run and its reply has
        left the window, and ConfigurationError when (``args`` given) its first
        outcome is of another method or other arguments: a caller reusing an id
        must not get another call's outcome as its own.
        """
        # Runs on every call with a request id, as record() does: written flat.
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise ConfigurationError(
                f"atom {guid}: a request id of {len(request_id)} characters ({method}) is "
                f"longer than {MAX_REQUEST_ID_CHARS}; refused, not run"
            )
        lock = self._lock
        lock.acquire()
        try:
            if self.window.seconds:
                self._evict_old(_now_ms())
            record = self._replies.get(request_id)
            if record is not None:
                if args is not None and record.digest:
                    _check_same_call(record, method, args, guid)
                return record
            match = _match_structured(request_id)
            if match is None:
                return None
            client, seq_text, issued_text = match.groups()
            seq, issued_ms = int(seq_text), int(issued_text)
            # Kept for record() of this id: its eviction needs them (see _parts).
            self._last_id = request_id
            self._last_parts = seq << _ISSUED_BITS | issued_ms
            now_ms = int(time.time() * 1000)
            if issued_ms > now_ms + MAX_ISSUED_AHEAD_MS:
                raise ConfigurationError(
                    f"atom {guid}: request id {request_id} ({method}) says it was issued "
                    f"{(issued_ms - now_ms) / 1000:.0f} s ahead of the atom's clock (at most "
                    f"{MAX_ISSUED_AHEAD_MS // 1000} s); refused, not run: check the caller's clock"
                )
            floor = self._floors.get(client)
            if floor is not None:
                if seq <= floor.seq:
                    raise RequestExpiredError(
                        f"atom {guid}: request id {request_id} ({method}) is older than the "
                        f"atom's reply window ({self.window}): its reply is gone; refused, "
                        "not run again"
                    )
                return None
            if issued_ms <= self.forgotten_before_ms:
                raise RequestExpiredError(
                    f"atom {guid}: request id {request_id} ({method}) was issued at or before "
                    f"{self.forgotten_before_ms} ms, older than the atom's reply window "
                    f"({self.window}) remembers; refused, not run again"
                )
            return None
        finally:
            lock.release()

    def record(self, record: ReplyRecord) -> int:
        """Keep ``record`` as the first outcome of its id; how many records the table
        holds then (its length, for the memory cap without another call)."""
        request_id = record.request_id
        lock = self._lock
        lock.acquire()
        try:
            replies = self._replies
            window = self.window
            seconds = window.seconds
            # Stamped only where an age limit needs it: every checkpoint carries the table.
            if seconds and not record.recorded_ms:
                record = replace(record, recorded_ms=_now_ms())
            if request_id in replies:
                old = replies.pop(request_id)
                self.payload_bytes -= len(old.payload) + len(old.request_id)
                self._epoch = next(_EPOCHS)  # a record left the middle: not a move on
            replies[request_id] = record
            if request_id == self._last_id:  # mostly: the id this call looked up
                self._parts[request_id] = self._last_parts
            held = self.payload_bytes + len(record.payload) + len(request_id)
            self.payload_bytes = held
            # Bounded in count, age and bytes; the newest reply always stays.
            entries = window.entries
            held_records = len(replies)
            if held_records > 1 and (held_records > entries or held > REPLY_TABLE_MAX_BYTES):
                evict = self._evict_first
                evict()  # a full window: one out for the one in
                held_records -= 1
                while held_records > 1 and (
                    held_records > entries or self.payload_bytes > REPLY_TABLE_MAX_BYTES
                ):
                    evict()
                    held_records -= 1
            if seconds:
                self._evict_old(record.recorded_ms)
                held_records = len(replies)
            self.recorded += 1
            return held_records
        finally:
            lock.release()

    def _evict_old(self, now_ms: int) -> None:
        oldest = now_ms - int(self.window.seconds * 1000)
        while self._replies:
            first = next(iter(self._replies.values()))
            if first.recorded_ms >= oldest:
                return
            self._evict_first()

    def _evict_first(self) -> None:
        request_id, dropped = self._replies.popitem(last=False)
        self._evicted += 1
        self.payload_bytes -= len(dropped.payload) + len(request_id)
        packed = self._parts.pop(request_id, -1)
        if packed >= 0:
            client = request_id[4:20]  # a hermesx id: hx1.<16 hex digits>.
            seq, issued_ms = packed >> _ISSUED_BITS, packed & _ISSUED_MASK
        else:
            parts = _parse(request_id)  # restored, recorded without a lookup, or not hx1
            if parts is None:
                return
            client, seq, issued_ms = parts
        floors = self._floors
        floor = floors.get(client)
        if floor is not None:
            if seq > floor.seq:
                floor.seq = seq
            if issued_ms > floor.issued_ms:
                floor.issued_ms = issued_ms
            floors.move_to_end(client)  # most recently touched last
            return  # as many floors as before
        floors[client] = _Floor(seq, issued_ms)
        if len(floors) <= MIN_FLOOR_CLIENTS:
            return
        while len(floors) > max(self.window.entries, MIN_FLOOR_CLIENTS):
            _, forgotten = floors.popitem(last=False)
            self.forgotten_before_ms = max(self.forgotten_before_ms, forgotten.issued_ms)


# Arguments longer than this are hashed through XXH3-128 first, at memory speed
# (8 MiB: about 1 ms, against 17 for SHA-256 and 27 for BLAKE2b here): every call
# with an id pays for its digest. The digest catches a caller's mistake, not an
# attack: a request id is its caller's own.
DIGEST_DIRECT_BYTES = 64 * 1024


# Every call with an id pays for its digest: copying an empty BLAKE2b costs less
# than making one (whose keyword arguments are parsed each time).
_BLAKE2B_16 = hashlib.blake2b(digest_size=16)


def call_digest(method: str, args: bytes) -> bytes:
    """What a reply record keeps of its call: 16 bytes of BLAKE2b of the method's
    length and name, the arguments' length and the arguments (past
    DIGEST_DIRECT_BYTES, their XXH3-128). All of them: a call that differs from the
    first only in the middle of long arguments is another call (docs/DESIGN.md §4)."""
    name = method.encode("utf-8")
    size = len(args)
    body = args if size <= DIGEST_DIRECT_BYTES else xxhash.xxh3_128_digest(args)
    digest = _BLAKE2B_16.copy()
    # The parts joined, in one update: the same digest as four updates, for less.
    digest.update(b"".join((len(name).to_bytes(4, "big"), name, size.to_bytes(8, "big"), body)))
    return digest.digest()


# Older versions hashed arguments longer than this by their head and tail only
# (their first and last half of it); a record they wrote still answers its retry.
_OLD_DIGEST_WHOLE_BYTES = DIGEST_DIRECT_BYTES


def _old_digest(method: str, args: bytes) -> bytes:
    """The digest older versions kept of a call with long arguments."""
    name = method.encode("utf-8")
    digest = _BLAKE2B_16.copy()
    digest.update(b"".join((len(name).to_bytes(4, "big"), name, len(args).to_bytes(8, "big"))))
    half, view = _OLD_DIGEST_WHOLE_BYTES // 2, memoryview(args)
    digest.update(view[:half])
    digest.update(view[-half:])
    return digest.digest()


def _check_same_call(record: ReplyRecord, method: str, args: bytes, guid: str) -> None:
    if record.digest != call_digest(method, args) and (
        # A record an older version wrote (a retry across a rolling upgrade); a whole
        # digest never equals this one, so only such records are matched this way.
        len(args) <= _OLD_DIGEST_WHOLE_BYTES or record.digest != _old_digest(method, args)
    ):
        raise ConfigurationError(
            f"atom {guid}: request id {record.request_id} was first sent for another "
            f"call (another method or other arguments than {method}'s now); refused, "
            "not run: a retry sends the same call, a new call a new id"
        )


def _size(record: ReplyRecord) -> int:
    return len(record.payload) + len(record.request_id)


def _now_ms() -> int:
    return int(time.time() * 1000)
