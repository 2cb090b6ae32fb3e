"""Group commit: checkpoints that arrive together share one LMDB transaction and one sync.

See docs/DESIGN.md §6 ("Group commit").

A durable LMDB commit costs a sync of the data and the meta page (~0.4 ms
here) whatever it holds, so one commit per checkpoint caps a storesite at a
few thousand checkpoints a second and makes every durable call wait for a
sync of its own. :class:`GroupCommitter` commits in groups: the sender that
finds no batch being committed becomes the committer of the next one (the
*leader*): it takes every checkpoint queued, its own included, applies each
in a nested transaction of one write transaction (a check that refuses one
checkpoint aborts its nested transaction only), commits once, and only then
answers each sender; the senders that queued meanwhile wait, and one of
them leads the next batch. A checkpoint is never acknowledged before the
sync that holds it; when the commit fails, every checkpoint of the batch
fails with a StorageError saying so.

Why a leader and not a thread of its own: a lone sender then commits its
own checkpoint without two thread hand-offs, which cost ~0.1 ms each on
this machine under load; under load the batches form all the same.

A sender may be the thread that reads its connection (the call channel runs
a lone checkpoint on its connection's own thread, :mod:`storesite.calls`):
when it is to wait for another sender's batch, :attr:`GroupCommitter.waiting`
is called first, to have another thread read its connection meanwhile, so
that what its peer sends next is not held up behind a batch it is not in.
"""

from __future__ import annotations

import logging
import os
import pathlib
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import lmdb

from hermesx.core.errors import HermesError, StorageError
from hermesx.core.identity import GUID
from storesite.environment import StoreEnvironment

__all__ = ["GroupCommitter"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# At most this many checkpoints in one transaction: bounds the time one
# batch holds the write lock and what a failed commit fails at once.
MAX_BATCH = 256


# Below this many free bytes in its data dir, a failed write is taken for a full disk.
DISK_FULL_BYTES = 4 * 1024 * 1024


def _nothing() -> None:
    pass


def _disk_full(exc: BaseException, data_dir: pathlib.Path) -> str | None:
    """What to say instead of ``exc`` when the disk under ``data_dir`` is full: LMDB
    reports a short write as an I/O error ("Input/output error"), which names no cause."""
    if not isinstance(exc, lmdb.Error) or isinstance(exc, lmdb.MapFullError):
        return None
    try:
        found = os.statvfs(data_dir)
    except OSError:
        return None
    free = found.f_bavail * found.f_frsize
    if free >= DISK_FULL_BYTES:
        return None
    return f"{exc}: the disk holding {data_dir} is full ({free} bytes free)"


class _Pending:
    """One queued write and, once its batch is synced, its outcome."""

    __slots__ = ("apply", "done", "error", "guid", "lead", "result", "wake")

    def __init__(self, guid: str, apply: Callable[[lmdb.Transaction], Any]) -> None:
        self.guid = guid
        self.apply = apply
        self.done = False
        # Made the leader of the next batch by the one before (its sender commits it).
        self.lead = False
        self.result: Any = None
        self.error: BaseException | None = None
        # Held until the write is done or its sender leads: released once, by the
        # leader, so a batch wakes its own senders and the next leader, no others.
        self.wake = threading.Lock()
        self.wake.acquire()


class GroupCommitter:
    """Checkpoints to one store, committed in groups by a leader among their senders."""

    def __init__(self, env: StoreEnvironment) -> None:
        self._env = env
        self._lock = threading.Lock()
        self._queue: deque[_Pending] = deque()
        self._leading = False
        self._closed = False
        self._idle = threading.Condition(self._lock)  # for close(): no batch under way
        self.commits = 0  # transactions committed (each one sync)
        self.written = 0  # writes acknowledged
        # Called by a sender about to wait for another's batch (see the module
        # docstring); a no-op unless the sender is a connection's reading thread.
        self.waiting: Callable[[], None] = _nothing

    def submit(self, guid: str, apply: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``apply(txn)`` inside the next group transaction; return its result once
        that transaction is on disk. Its exception (a refused check) is raised here
        and changes nothing; a failed commit raises StorageError."""
        GUID.parse(guid)  # refuse text that is not a GUID before it becomes a key
        pending = _Pending(guid, apply)
        with self._lock:
            if self._closed:
                raise StorageError(f"storesite {self._env.sid} is closing; checkpoint not stored")
            self._queue.append(pending)
            if not self._leading:
                # No batch is being committed: this sender commits the next one.
                self._leading = pending.lead = True
        if not pending.lead:
            self.waiting()
            pending.wake.acquire()  # until its batch is synced, or it is to lead one
        if not pending.done:
            self._lead()
        if pending.error is not None:
            raise pending.error
        result: T = pending.result
        return result

    def submit_all(
        self, writes: list[tuple[str, Callable[[lmdb.Transaction], Any]]]
    ) -> list[tuple[Any, BaseException | None]]:
        """:meth:`submit` of several writes at once, from one thread (a node's checkpoints
        of several atoms in one request, :mod:`storesite.batches`): queued together, so
        they share a transaction unless the batch being committed fills up. Returns each
        write's result and error (None, or its refusal, or the failed commit's), in order."""
        for guid, _ in writes:
            GUID.parse(guid)
        pendings = [_Pending(guid, apply) for guid, apply in writes]
        if not pendings:
            return []
        with self._lock:
            if self._closed:
                raise StorageError(f"storesite {self._env.sid} is closing; checkpoint not stored")
            self._queue.extend(pendings)
            if not self._leading:
                self._leading = pendings[0].lead = True
        waited = False
        for pending in pendings:
            # Each is released once: done by another's batch, or made the next leader;
            # one done by this thread's own batch is released already.
            if not pending.lead:
                if not pending.done and not waited:
                    self.waiting()
                    waited = True
                pending.wake.acquire()
            if not pending.done:
                self._lead()
        return [(pending.result, pending.error) for pending in pendings]

    def _lead(self) -> None:
        """Commit every write queued (the leader's own first), then hand the lead on."""
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
        try:
            self._commit(batch)
        finally:
            with self._lock:
                for written in batch:
                    written.done = True
                following = self._queue[0] if self._queue else None
                if following is None:
                    self._leading = False
                    self._idle.notify_all()
                else:
                    following.lead = True
            for written in batch[1:]:
                written.wake.release()
            if following is not None:
                following.wake.release()

    def close(self) -> None:
        """Refuse new checkpoints; wait (bounded) for the batch being committed."""
        with self._lock:
            self._closed = True
            self._idle.wait_for(lambda: not self._leading, timeout=30)

    def _commit(self, batch: list[_Pending]) -> None:
        """Apply and commit ``batch`` in one transaction (outside the lock)."""
        env = self._env.env
        try:
            txn = env.begin(write=True)
        except lmdb.Error as exc:
            self._fail(batch, exc)
            return
        try:
            if len(batch) == 1:
                # A lone write needs no nested transaction: its refusal aborts the whole
                # one, which holds nothing else (a nested one costs LMDB a dirty-page
                # list of its own and a copy of each page it touches).
                if not self._apply_alone(txn, batch[0]):
                    return
            else:
                for pending in batch:
                    self._apply(env, txn, pending)
        except lmdb.Error as exc:
            txn.abort()
            self._fail(batch, exc)
            return
        except BaseException as exc:  # a bug in a check: nothing of the batch is kept
            txn.abort()
            log.exception("storesite %s: a group commit failed", self._env.sid)
            self._fail(batch, exc)
            return
        try:
            txn.commit()
        except lmdb.Error as exc:
            self._fail(batch, exc)
            return
        self.commits += 1
        self.written += sum(1 for pending in batch if pending.error is None)

    @staticmethod
    def _apply_alone(txn: lmdb.Transaction, pending: _Pending) -> bool:
        """The one write of a batch, in ``txn`` itself; False (``txn`` aborted, nothing to
        commit) when it was refused."""
        try:
            pending.result = pending.apply(txn)
        except HermesError as exc:
            txn.abort()
            pending.error = exc
            return False
        return True

    @staticmethod
    def _apply(env: lmdb.Environment, txn: lmdb.Transaction, pending: _Pending) -> None:
        """One write in a nested transaction: a refusal undoes that write only."""
        nested = env.begin(write=True, parent=txn)
        try:
            pending.result = pending.apply(nested)
        except HermesError as exc:
            nested.abort()
            pending.error = exc
            return
        except BaseException:
            nested.abort()
            raise
        nested.commit()

    def _fail(self, batch: list[_Pending], exc: BaseException) -> None:
        sid = self._env.sid
        why = _disk_full(exc, self._env.data_dir) or str(exc)
        log.error("storesite %s: a group commit of %d checkpoints failed: %s", sid, len(batch), why)
        for pending in batch:
            if pending.error is None:
                pending.result = None
                pending.error = StorageError(
                    f"storesite {sid}: checkpoint of atom {pending.guid} not stored: the "
                    f"commit of {len(batch)} checkpoints written together failed: {why}"
                )
