"""Checkpoints of several atoms to one storesite in one request (docs/DESIGN.md §4.1, §6).

A node's every-call atoms each wait for their own checkpoint before their
reply leaves. Sent one request each, a storesite round trip costs every
checkpoint its frames, its TLS records, a thread woken at each end and a
reply of its own. :class:`CheckpointBatcher` sends what is ready together:
at most eight requests to the storesite are under way; a checkpoint
that finds them all under way is queued, and the sender whose request finishes hands
its place to the first one queued, which sends itself and every checkpoint
queued behind it as one ``checkpoint-batch`` request (alone, as the
``checkpoint`` / ``checkpoint-delta`` request it is) and hands each sender its
own outcome. No thread is started: the senders themselves take turns. A
queued checkpoint waits no longer than its own deadline (then it leaves the
queue, failed with the timeout a lone one's would give), and a request goes
with the earliest deadline of the checkpoints in it.

The request's body is a msgpack array of ``[kind, body]`` (each a request of
that kind, as it would travel alone); the reply's a msgpack array of one
entry per request, in order: ``[1, reply body]`` or ``[2, error kind,
message]``. Each atom's outcome is its own: a refused delta or a stale
location fails that atom's checkpoint only. The storesite advertises the
kinds its call channel serves in its record (``CALL_KINDS``); a node sends
the batch kind only to one that lists it (a listener ends a connection on a
kind it does not know, docs/DESIGN.md §4.1 "Limits").
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import msgpack

from hermesx.core.errors import CallTimeoutError, ConfigurationError, HermesError, error_from_wire

__all__ = [
    "CALL_KINDS",
    "CHECKPOINT_BATCH",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ITEMS",
    "MORE_CHECKPOINTS",
    "CheckpointBatcher",
    "Outcome",
    "decode_batch",
    "decode_outcomes",
    "encode_batch",
    "encode_outcomes",
]

CHECKPOINT_BATCH = "checkpoint-batch"
# A checkpoint request's meta entry saying that its sender has other checkpoints in
# flight to the storesite: those may arrive while this one is committed, so the
# storesite has them read meanwhile (to join the next group, storesite.calls).
MORE_CHECKPOINTS = "more"
_MORE = {MORE_CHECKPOINTS: "1"}
# The storesite record's entry listing the kinds its call channel serves.
CALL_KINDS = "call-kinds"
# A batch holds at most this many checkpoints and this many bytes of bodies
# (under the channel's 8 MiB frame; a single state sent alone is under 2 MiB).
MAX_BATCH_ITEMS = 64
MAX_BATCH_BYTES = 4 * 2**20
_OK, _ERROR = 1, 2

# One entry of a batch's reply: the reply's body, or the error of that checkpoint.
Outcome = bytes | HermesError


def encode_batch(items: Sequence[tuple[str, bytes]]) -> bytes:
    body: bytes = msgpack.packb([[kind, data] for kind, data in items], use_bin_type=True)
    return body


def decode_batch(body: bytes) -> list[tuple[str, bytes]]:
    """A batch request's ``(kind, body)`` pairs; a ConfigurationError when malformed."""
    try:
        items = msgpack.unpackb(body, raw=False, use_list=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ConfigurationError(
            f"a {CHECKPOINT_BATCH} request that is not msgpack: {exc}"
        ) from None
    if (
        not isinstance(items, list)
        or not 0 < len(items) <= MAX_BATCH_ITEMS
        or not all(
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], bytes)
            for item in items
        )
    ):
        raise ConfigurationError(
            f"a {CHECKPOINT_BATCH} request must be 1 to {MAX_BATCH_ITEMS} [kind, body] pairs"
        )
    return [(kind, data) for kind, data in items]


def encode_outcomes(outcomes: Sequence[Outcome]) -> bytes:
    body: bytes = msgpack.packb(
        [[_ERROR, o.kind, str(o)] if isinstance(o, HermesError) else [_OK, o] for o in outcomes],
        use_bin_type=True,
    )
    return body


def decode_outcomes(body: bytes, count: int, peer: str) -> list[Outcome]:
    """The outcomes of a batch of ``count`` requests; a malformed reply is a
    ConfigurationError (it fails every checkpoint of the batch)."""
    try:
        entries = msgpack.unpackb(body, raw=False, use_list=True)
        if not isinstance(entries, list) or len(entries) != count:
            raise ValueError(f"{count} outcomes expected")
        return [_outcome(entry) for entry in entries]
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ConfigurationError(f"{peer} answered a {CHECKPOINT_BATCH} wrongly: {exc}") from None


def _outcome(entry: Any) -> Outcome:
    if not isinstance(entry, list):
        raise ValueError(f"not an outcome: {entry!r:.80}")
    if len(entry) == 2 and entry[0] == _OK and isinstance(entry[1], bytes):
        return entry[1]
    if len(entry) == 3 and entry[0] == _ERROR and all(isinstance(e, str) for e in entry[1:]):
        return error_from_wire(entry[1], entry[2])
    raise ValueError(f"not an outcome: {entry!r:.80}")


class _Sender:
    """One checkpoint waiting to be sent, and then its outcome."""

    __slots__ = ("body", "deadline", "done", "kind", "lead", "outcome", "wake")

    def __init__(self, kind: str, body: bytes, deadline: float) -> None:
        self.kind = kind
        self.body = body
        self.deadline = deadline
        self.done = False
        self.lead = False
        self.outcome: Outcome = b""
        # Released once, by a leader: when this one's outcome is in, or when its
        # sender is to lead the next request. Made only for a sender that is queued
        # (one that leads at once never waits on it).
        self.wake: threading.Lock | None = None


def _late(peer: str, sender: _Sender) -> CallTimeoutError:
    return CallTimeoutError(f"{peer}: a {sender.kind} request waited past its deadline to be sent")


class CheckpointBatcher:
    """The checkpoints of one node to one storesite, sent by leaders among their senders.

    At most ``depth`` requests are under way at a time: a checkpoint that finds
    them all under way is queued, and goes with the others queued in the next
    request, sent by the first sender a finished request hands its place to.
    More than one under way keeps a sender that waits for a CPU from holding up
    every atom's checkpoint (with one or two, eight clients on eight atoms of a
    loaded machine lost calls/s: docs/PERFORMANCE.md "Durable calls"). Eight, not
    four: a queued checkpoint waits a whole round trip before it is sent and costs a
    thread wake-up more, while one sent at once joins the storesite's next group
    commit anyway (the meta below); with eight clients on eight atoms, eight under
    way gave 1.1-1.7 times the calls/s of four (docs/PERFORMANCE.md "Durable calls,
    the node's side"), so batches form only when more atoms checkpoint at once. A
    request sent while another is under way says so (meta ``more``, so the storesite
    reads on meanwhile: storesite.calls).
    """

    def __init__(self, peer: str, depth: int = 8) -> None:
        self.peer = peer
        self._depth = depth
        self._lock = threading.Lock()
        self._queue: deque[_Sender] = deque()
        self._under_way = 0
        # Requests sent and checkpoints in them (since made: for measurements).
        self.requests = 0
        self.checkpoints = 0

    def call(self, connection: Any, kind: str, body: bytes, timeout: float) -> bytes:
        """Send checkpoint request ``kind`` with ``body`` on ``connection`` (alone or with
        others queued); its reply's body, or its own error raised."""
        sender = _Sender(kind, body, time.monotonic() + timeout)
        with self._lock:
            if self._under_way < self._depth:
                self._under_way += 1
                sender.lead = True
            else:
                if sender.wake is None:
                    sender.wake = threading.Lock()
                    sender.wake.acquire()
                self._queue.append(sender)
        # Until its outcome is in, or it is handed a place; no longer than its deadline.
        wake = sender.wake
        if wake is not None:  # queued
            left = sender.deadline - time.monotonic()
            if not wake.acquire(timeout=max(0.0, left)):
                self._waited_out(sender, wake)
        if not sender.done:
            self._lead(connection, sender)
        outcome = sender.outcome
        if isinstance(outcome, HermesError):
            raise outcome
        return outcome

    def _waited_out(self, sender: _Sender, wake: threading.Lock) -> None:
        """``sender``'s deadline passed while it waited: it leaves the queue with a timeout,
        as a lone checkpoint would; or, taken meanwhile, goes on as it was taken."""
        with self._lock:
            # Whoever took it did so under this lock: the state read here is the whole
            # story, whatever the order of that release and this timeout.
            if sender.lead:
                return  # handed a place as the wait ended: it sends those queued behind it
            try:
                self._queue.remove(sender)
            except ValueError:
                pass  # in a request under way: its outcome is in by its deadline (_send)
            else:
                raise _late(self.peer, sender)
        wake.acquire()

    def _lead(self, connection: Any, own: _Sender) -> None:
        """Send ``own`` with what is queued, then hand the place on to the first queued."""
        with self._lock:
            batch = [own]
            size = len(own.body)
            while self._queue and len(batch) < MAX_BATCH_ITEMS:
                size += len(self._queue[0].body)
                if size > MAX_BATCH_BYTES:
                    break
                batch.append(self._queue.popleft())
            others = self._under_way > 1
        try:
            self._send(connection, batch, others)
        finally:
            with self._lock:
                for sent in batch:
                    sent.done = True
                following = self._queue.popleft() if self._queue else None
                if following is None:
                    self._under_way -= 1
                else:  # its place goes on: the count stays
                    following.lead = True
            for sent in batch[1:]:  # (queued: each has its lock)
                if sent.wake is not None:
                    sent.wake.release()
            if following is not None and following.wake is not None:
                following.wake.release()

    def _send(self, connection: Any, batch: list[_Sender], others: bool) -> None:
        """One request for ``batch``; every sender's outcome set (an error included)."""
        now = time.monotonic()
        live = []
        for sender in batch:
            if sender.deadline > now:
                live.append(sender)
            else:  # waited past its deadline for the request before it
                sender.outcome = _late(self.peer, sender)
        if not live:
            return
        self.requests += 1
        self.checkpoints += len(live)
        # The earliest deadline of those in it: none waits for its outcome past its own.
        timeout = min(sender.deadline for sender in live) - now
        meta = _MORE if others else None
        try:
            if len(live) == 1:
                live[0].outcome = connection.call(live[0].kind, live[0].body, timeout, meta)
                return
            body = encode_batch([(sender.kind, sender.body) for sender in live])
            reply = connection.call(CHECKPOINT_BATCH, body, timeout, meta)
            outcomes = decode_outcomes(reply, len(live), self.peer)
        except HermesError as exc:
            for sender in live:
                sender.outcome = exc
            return
        except BaseException as exc:  # a bug: every sender learns it, none waits forever
            for sender in live:
                sender.outcome = HermesError(f"{self.peer}: checkpoint request failed: {exc!r}")
            raise
        for sender, outcome in zip(live, outcomes, strict=True):
            sender.outcome = outcome
