"""Several atoms' checkpoints in one request, each atom's outcome its own (docs/DESIGN.md §4.1).

A node sends the checkpoints that become ready while one request to the
storesite is under way as one ``checkpoint-batch`` request; the storesite
stores them in one group commit and answers each. What a caller would notice
if it went wrong: one atom's refused delta or stale location failing other
atoms' calls, a call acknowledged before its checkpoint was stored, or a
node sending a kind an older storesite does not know (which ends the
connection every checkpoint shares).
"""

from __future__ import annotations

import logging
import pathlib
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager

import pytest
from test_checkpoint_grouping import held_delta_site

from hermesx.core.delta import StateDelta, encode_delta
from hermesx.core.errors import (
    CallTimeoutError,
    HermesError,
    MigrationError,
    StorageError,
)
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import CHUNK, AtomState, encode_state, snapshot_checksum
from hermesx.rpc import storesite_batch
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.storesite_batch import (
    CHECKPOINT_BATCH,
    CheckpointBatcher,
    decode_batch,
    decode_outcomes,
    encode_batch,
    encode_outcomes,
)
from hermesx.rpc.storesite_client import (
    CHECKPOINT,
    CHECKPOINT_DELTA,
    CheckedSnapshot,
)
from hermesx.testing.wait import wait_until
from storesite import batches
from storesite.batches import put_batch
from storesite.locks import AtomLocks
from storesite.records import Provenance
from storesite.store import AtomStore

SID = "s1"


class _Connection:
    """A call connection whose requests wait until released; it records each."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.metas: list[Mapping[str, str] | None] = []
        self.timeouts: list[float] = []
        self.release = threading.Event()
        self.held: dict[bytes, threading.Event] = {}  # bodies answered later than others
        self.answer: dict[bytes, bytes | HermesError] = {}

    def call(
        self, kind: str, body: bytes, timeout: float, meta: Mapping[str, str] | None = None
    ) -> bytes:
        self.sent.append((kind, body))
        self.metas.append(meta)
        self.timeouts.append(timeout)
        if not self.held.get(body, self.release).wait(min(timeout, 10)):
            raise CallTimeoutError(f"{kind}: no reply within {timeout:g} s")
        if kind != CHECKPOINT_BATCH:
            answer = self.answer.get(body, b"ok:" + body)
            if isinstance(answer, HermesError):
                raise answer
            return answer
        items = decode_batch(body)
        return encode_outcomes([self.answer.get(data, b"ok:" + data) for _, data in items])


def test_checkpoints_queued_behind_a_request_go_together_each_with_its_own_outcome() -> None:
    batcher = CheckpointBatcher("storesite s1", depth=1)
    connection = _Connection()
    connection.answer[b"c"] = MigrationError("atom c moved")
    outcomes: dict[bytes, object] = {}

    def send(body: bytes) -> None:
        try:
            outcomes[body] = batcher.call(connection, CHECKPOINT_DELTA, body, 10)
        except HermesError as exc:
            outcomes[body] = exc

    first = threading.Thread(target=send, args=(b"a",))
    first.start()
    wait_until(lambda: len(connection.sent) == 1, timeout=5, what="the first request")
    others = [threading.Thread(target=send, args=(body,)) for body in (b"b", b"c", b"d")]
    for thread in others:
        thread.start()
    wait_until(lambda: len(batcher._queue) == 3, timeout=5, what="three queued")
    assert len(connection.sent) == 1  # nothing else is sent while a request is under way
    connection.release.set()
    for thread in [first, *others]:
        thread.join(10)
    # The first alone, as its own kind; the three queued meanwhile in one request.
    assert connection.sent[0] == (CHECKPOINT_DELTA, b"a")
    assert connection.sent[1][0] == CHECKPOINT_BATCH
    assert decode_batch(connection.sent[1][1]) == [
        (CHECKPOINT_DELTA, b) for b in (b"b", b"c", b"d")
    ]
    assert len(connection.sent) == 2
    # Atom c's refusal is c's alone.
    assert outcomes[b"a"] == b"ok:a" and outcomes[b"b"] == b"ok:b" and outcomes[b"d"] == b"ok:d"
    assert isinstance(outcomes[b"c"], MigrationError) and "atom c moved" in str(outcomes[b"c"])
    # Idle again: the next one goes alone.
    assert batcher.call(connection, CHECKPOINT, b"e", 10) == b"ok:e"
    assert connection.sent[-1] == (CHECKPOINT, b"e")


def test_two_requests_may_be_under_way_and_the_second_says_so() -> None:
    batcher = CheckpointBatcher("storesite s1", depth=2)
    connection = _Connection()
    connection.held[b"b"] = later = threading.Event()
    outcomes: dict[bytes, bytes] = {}

    def send(body: bytes) -> None:
        outcomes[body] = batcher.call(connection, CHECKPOINT_DELTA, body, 10)

    threads = [threading.Thread(target=send, args=(body,)) for body in (b"a", b"b")]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(connection.sent) == 2, timeout=5, what="two requests under way")
    more = [threading.Thread(target=send, args=(body,)) for body in (b"c", b"d")]
    for thread in more:
        thread.start()
    wait_until(lambda: len(batcher._queue) == 2, timeout=5, what="two queued")
    assert len(connection.sent) == 2
    connection.release.set()
    wait_until(lambda: len(outcomes) == 3, timeout=5, what="all but b answered")
    later.set()
    for thread in threads + more:
        thread.join(10)
    assert outcomes == {b: b"ok:" + b for b in (b"a", b"b", b"c", b"d")}
    # One of the two first ones was sent while the other was under way, and said so.
    assert sum(1 for meta in connection.metas[:2] if meta and meta.get("more")) == 1
    # The two queued went together, in the place the finished request left.
    assert connection.sent[2][0] == CHECKPOINT_BATCH
    assert sorted(decode_batch(connection.sent[2][1])) == sorted(
        [(CHECKPOINT_DELTA, b"c"), (CHECKPOINT_DELTA, b"d")]
    )
    assert len(connection.sent) == 3


class _Senders:
    """Threads calling one batcher, each checkpoint's outcome (reply or error) kept by body."""

    def __init__(self, batcher: CheckpointBatcher, connection: _Connection) -> None:
        self.batcher = batcher
        self.connection = connection
        self.outcomes: dict[bytes, bytes | HermesError] = {}
        self.threads: list[threading.Thread] = []

    def start(self, body: bytes, timeout: float) -> threading.Thread:
        def send() -> None:
            try:
                reply = self.batcher.call(self.connection, CHECKPOINT, body, timeout)
            except HermesError as exc:
                self.outcomes[body] = exc
            else:
                self.outcomes[body] = reply

        thread = threading.Thread(target=send)
        thread.start()
        self.threads.append(thread)
        return thread

    def join(self) -> None:
        for thread in self.threads:
            thread.join(20)


def _idle(batcher: CheckpointBatcher) -> bool:
    with batcher._lock:
        return batcher._under_way == 0 and not batcher._queue


def test_a_queued_checkpoint_ends_by_its_own_deadline_and_the_one_behind_it_still_goes() -> None:
    batcher = CheckpointBatcher("storesite s1", depth=1)
    connection = _Connection()
    connection.held[b"slow"] = slow_done = threading.Event()
    connection.release.set()  # the others are answered at once
    senders = _Senders(batcher, connection)
    try:
        senders.start(b"slow", 15.0)  # another atom's request, to a slow storesite
        wait_until(lambda: len(connection.sent) == 1, timeout=5, what="the first request")
        short = senders.start(b"short", 0.3)
        wait_until(lambda: len(batcher._queue) == 1, timeout=5, what="short queued")
        senders.start(b"behind", 15.0)
        # Its deadline is 0.3 s; 5 s is plenty on a loaded machine (not a speed limit:
        # before, it waited for the slow request, 15 s).
        short.join(5.0)
        assert not short.is_alive(), "a queued checkpoint waits past its own deadline"
        assert isinstance(senders.outcomes[b"short"], CallTimeoutError)
        assert "waited past its deadline" in str(senders.outcomes[b"short"])
        assert len(batcher._queue) == 1  # it left the queue; the one behind it is there
    finally:
        slow_done.set()
        senders.join()
    # Never sent, so never stored; the one behind it went in the place the slow one left.
    assert connection.sent == [(CHECKPOINT, b"slow"), (CHECKPOINT, b"behind")]
    assert senders.outcomes[b"slow"] == b"ok:slow" and senders.outcomes[b"behind"] == b"ok:behind"
    assert _idle(batcher)


class _HandedAsItTimesOut:
    """A sender's wake whose timed wait reports its timeout only once the sender has been
    handed a place (released), and its deadline passed: the race of the two, decided the
    way a plain lock's wait could decide it."""

    def __init__(self, deadline: float) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._released = threading.Event()
        self._deadline = deadline

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if timeout < 0:
            return self._lock.acquire()
        assert self._released.wait(10), "never handed a place"
        wait_until(lambda: time.monotonic() > self._deadline, timeout=5, what="its deadline")
        return False

    def release(self) -> None:
        self._lock.release()
        self._released.set()


def test_a_place_handed_as_the_wait_times_out_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Racing(storesite_batch._Sender):
        def __init__(self, kind: str, body: bytes, deadline: float) -> None:
            super().__init__(kind, body, deadline)
            if body == b"short":
                self.wake = _HandedAsItTimesOut(deadline)  # type: ignore[assignment]

    monkeypatch.setattr(storesite_batch, "_Sender", Racing)
    batcher = CheckpointBatcher("storesite s1", depth=1)
    connection = _Connection()
    connection.held[b"first"] = first_done = threading.Event()
    connection.release.set()
    senders = _Senders(batcher, connection)
    try:
        senders.start(b"first", 15.0)
        wait_until(lambda: len(connection.sent) == 1, timeout=5, what="the first request")
        senders.start(b"short", 0.3)
        wait_until(lambda: len(batcher._queue) == 1, timeout=5, what="short queued")
        senders.start(b"behind", 15.0)
        wait_until(lambda: len(batcher._queue) == 2, timeout=5, what="two queued")
    finally:
        first_done.set()  # the place goes to short, whose wait then reports its timeout
        senders.join()
    # Short, late, is answered with the timeout and not sent; the place it was handed
    # still carries the one queued behind it, and comes back.
    assert isinstance(senders.outcomes[b"short"], CallTimeoutError)
    assert senders.outcomes[b"behind"] == b"ok:behind"
    assert connection.sent == [(CHECKPOINT, b"first"), (CHECKPOINT, b"behind")]
    assert _idle(batcher)
    assert batcher.call(connection, CHECKPOINT, b"next", 5) == b"ok:next"


def test_a_batch_goes_with_the_earliest_deadline_of_its_checkpoints() -> None:
    batcher = CheckpointBatcher("storesite s1", depth=1)
    connection = _Connection()
    connection.held[b"first"] = first_done = threading.Event()
    senders = _Senders(batcher, connection)
    try:
        senders.start(b"first", 15.0)
        wait_until(lambda: len(connection.sent) == 1, timeout=5, what="the first request")
        senders.start(b"long", 15.0)
        wait_until(lambda: len(batcher._queue) == 1, timeout=5, what="long queued")
        senders.start(b"short", 2.0)
        wait_until(lambda: len(batcher._queue) == 2, timeout=5, what="two queued")
        first_done.set()
        # The batch of long and short (led by long) waits for a reply no longer than
        # short's deadline: short is answered by then, its request's timeout.
        wait_until(lambda: len(connection.sent) == 2, timeout=5, what="the batch")
    finally:
        first_done.set()
        senders.join()
    assert connection.sent[1][0] == CHECKPOINT_BATCH
    assert connection.timeouts[1] <= 2.0
    # No reply came in time: neither is acknowledged.
    assert isinstance(senders.outcomes[b"short"], CallTimeoutError)
    assert isinstance(senders.outcomes[b"long"], CallTimeoutError)
    assert _idle(batcher)


def test_a_failed_request_fails_each_of_its_checkpoints_and_the_next_one_is_sent() -> None:
    batcher = CheckpointBatcher("storesite s1")

    class Broken(_Connection):
        def call(
            self, kind: str, body: bytes, timeout: float, meta: Mapping[str, str] | None = None
        ) -> bytes:
            self.sent.append((kind, body))
            if body == b"boom":
                raise StorageError("the storesite went away")
            return b"fine"

    connection = Broken()
    with pytest.raises(StorageError, match="went away"):
        batcher.call(connection, CHECKPOINT, b"boom", 10)
    assert batcher.call(connection, CHECKPOINT, b"next", 10) == b"fine"


def test_a_batch_reply_that_does_not_fit_its_request_is_an_error() -> None:
    reply = encode_outcomes([b"one", StorageError("two")])
    assert decode_outcomes(reply, 2, "storesite s1")[0] == b"one"
    assert isinstance(decode_outcomes(reply, 2, "storesite s1")[1], StorageError)
    with pytest.raises(HermesError, match="answered a checkpoint-batch wrongly"):
        decode_outcomes(reply, 3, "storesite s1")
    with pytest.raises(HermesError, match="1 to 64"):
        decode_batch(encode_batch([]))
    with pytest.raises(HermesError, match="not msgpack"):
        decode_batch(b"\xc1")


def test_a_storesite_that_does_not_list_the_batch_kind_gets_single_requests() -> None:
    kinds: list[str] = []
    # An older storesite: no checkpoint-batch handler (the listener would end the
    # connection on it, failing every checkpoint in flight on it).
    with held_delta_site(8, lambda call: kinds.append(call.kind)) as (site, release):
        state = CheckedSnapshot(b"delta", 1, 1)
        acks: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: acks.append(
                    site.send_delta("g", TAD("n1", 1), state, 2, (1, 5)).checksum
                )
            )
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(kinds) == 4, timeout=5, what="four requests at once")
        release.set()
        for thread in threads:
            thread.join(10)
        assert acks == [7] * 4
        assert kinds == [CHECKPOINT_DELTA] * 4


# ------------------------------------------------------------------ the storesite's side


class _Site:
    """What put_batch needs of a Storesite: its store, its id and its atoms' locks."""

    def __init__(self, store: AtomStore) -> None:
        self.store = store
        self.sid = store.sid
        self._locks = AtomLocks()

    def holding(self, guid: str) -> AbstractContextManager[None]:
        return self._locks.hold(guid)


@pytest.fixture
def site(tmp_path: pathlib.Path) -> Iterator[_Site]:
    with AtomStore(SID, tmp_path / "data", init=True) as store:
        yield _Site(store)


def _register(store: AtomStore) -> str:
    guid = str(GUID.new(SID))
    memory = b"\x01" * CHUNK + bytes(3 * CHUNK)
    state = AtomState(
        module_hash="ab" * 32,
        guid=guid,
        memory_size=len(memory),
        memory=((0, memory[:CHUNK]),),
        globals=(("g", "i32", 1),),
        generation=0,
    )
    snapshot = encode_state(state)
    store.register_atom(
        guid,
        pb.AtomMeta(name=guid[-6:], module_hash="ab" * 32),
        TAD("n1", 1),
        snapshot,
        Provenance(checksum=snapshot_checksum(snapshot), generation=0),
    )
    return guid


def _checkpoint_request(guid: str, data: bytes, seq: int) -> pb.CheckpointRequest:
    """Checkpoint ``seq`` of ``guid`` (its generation too) from n1, carrying ``data``."""
    return pb.CheckpointRequest(
        guid=guid,
        tad=pb.TAD(node="n1", age=1),
        snapshot=data,
        seq=seq,
        checksum=snapshot_checksum(data),
        generation=seq,
    )


def _delta_request(guid: str, seq: int, base: tuple[int, int], fill: int) -> bytes:
    rest = AtomState(
        module_hash="ab" * 32,
        guid=guid,
        memory_size=0,
        memory=(),
        globals=(("g", "i32", fill),),
        generation=seq,
    )
    data = encode_delta(
        StateDelta(
            memory_size=4 * CHUNK,
            chunks=((CHUNK, bytes([fill]) * CHUNK),),
            kv_put=(),
            kv_delete=(),
            replies_dropped=0,
            replies_added=(),
            rest=rest,
        )
    )
    head = _checkpoint_request(guid, data, seq)
    request = pb.CheckpointDelta(head=head, base_seq=base[0], base_checksum=base[1])
    body: bytes = request.SerializeToString()
    return body


def test_a_batch_is_one_commit_and_a_refused_delta_refuses_that_atom_only(site: _Site) -> None:
    store = site.store
    guids = [_register(store) for _ in range(4)]
    bases = {g: store.latest_checkpoint(g).checksum for g in guids}
    stale, moved = guids[1], guids[2]
    commits, deltas = store.committer.commits, store.status().deltas_written
    requests = [
        (CHECKPOINT_DELTA, _delta_request(guids[0], 1, (0, bases[guids[0]]), 5)),
        (CHECKPOINT_DELTA, _delta_request(stale, 1, (0, 12345), 6)),  # not its base
        (CHECKPOINT_DELTA, _delta_request(moved, 1, (0, bases[moved]), 7).replace(b"n1", b"n9")),
        (CHECKPOINT_DELTA, _delta_request(guids[3], 1, (0, bases[guids[3]]), 8)),
    ]
    outcomes = put_batch(site, requests)  # type: ignore[arg-type]
    assert len(outcomes) == 4
    for i in (0, 3):
        body = outcomes[i]
        assert isinstance(body, bytes)
        ack = pb.CheckpointAck.FromString(body)
        assert ack.stored and not ack.refused
        assert store.latest_checkpoint(guids[i]).seq == 1
    # The stale base: refused (an answer: the node sends its whole state), nothing stored.
    body = outcomes[1]
    assert isinstance(body, bytes)
    refused = pb.CheckpointAck.FromString(body)
    assert not refused.stored and "send the whole state" in refused.refused
    assert store.latest_checkpoint(stale).seq == 0
    # From a location the atom is not at: that atom's error, nothing stored.
    assert isinstance(outcomes[2], MigrationError)
    assert store.latest_checkpoint(moved).seq == 0
    # The two stored went to disk in one commit.
    assert store.committer.commits == commits + 1
    assert store.status().deltas_written == deltas + 2
    # The refused one's whole state, then, is stored as any checkpoint.
    whole = store.latest_checkpoint(stale).snapshot
    request = _checkpoint_request(stale, whole, 2)
    again = put_batch(site, [(CHECKPOINT, request.SerializeToString())])  # type: ignore[arg-type]
    assert again == [pb.Empty().SerializeToString()]
    assert store.latest_checkpoint(stale).seq == 2


def test_a_malformed_or_repeated_item_fails_alone(site: _Site) -> None:
    store = site.store
    guid, other = _register(store), _register(store)
    base = store.latest_checkpoint(guid).checksum
    body = _delta_request(guid, 1, (0, base), 5)
    outcomes = put_batch(
        site,  # type: ignore[arg-type]
        [
            (CHECKPOINT_DELTA, body),
            (CHECKPOINT_DELTA, body),  # the same atom twice
            (CHECKPOINT, b"\xff\xff not a request"),
            ("invoke", b""),
            (CHECKPOINT_DELTA, _delta_request(other, 1, (0, 1), 5)[:-3] + b"bad"),
        ],
    )
    assert isinstance(outcomes[0], bytes) and pb.CheckpointAck.FromString(outcomes[0]).stored
    assert isinstance(outcomes[1], StorageError) and "two checkpoints" in str(outcomes[1])
    assert isinstance(outcomes[2], StorageError) and "malformed" in str(outcomes[2])
    assert isinstance(outcomes[3], StorageError) and "'invoke'" in str(outcomes[3])
    assert isinstance(outcomes[4], HermesError)
    assert store.latest_checkpoint(guid).seq == 1
    assert store.latest_checkpoint(other).seq == 0


def test_an_unforeseen_failure_in_one_items_answer_fails_that_item_only(
    site: _Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = site.store
    guids = [_register(store) for _ in range(3)]
    broken = guids[1]
    real = batches._done

    def done(site: object, item: batches._Item, result: object) -> object:
        if item.guid == broken:
            raise RuntimeError("a bug in one answer")
        return real(site, item, result)  # type: ignore[arg-type]

    monkeypatch.setattr(batches, "_done", done)
    requests = [
        (CHECKPOINT_DELTA, _delta_request(g, 1, (0, store.latest_checkpoint(g).checksum), 5))
        for g in guids
    ]
    with caplog.at_level(logging.ERROR, logger=batches.__name__):
        outcomes = put_batch(site, requests)  # type: ignore[arg-type]
    # The others are answered with their own acknowledgement (they were committed)...
    for i in (0, 2):
        body = outcomes[i]
        assert isinstance(body, bytes) and pb.CheckpointAck.FromString(body).stored
        assert store.latest_checkpoint(guids[i]).seq == 1
    # ... and the one whose answer failed with an error naming what went wrong, logged once.
    assert isinstance(outcomes[1], StorageError)
    assert "failed in checkpoint-delta: a bug in one answer" in str(outcomes[1])
    logged = [r for r in caplog.records if broken in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
