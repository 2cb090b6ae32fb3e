"""Group commit: checkpoints that arrive together share one LMDB transaction and one sync.

See docs/DESIGN.md §6 ("Group commit").

A durable LMDB commit costs a sync of the data and the meta page (~0.4 ms
here) whatever it holds, so one commit per checkpoint caps a storesite at a
few thousand checkpoints a second and makes every durable call wait for a
sync of its own. :class:`GroupCommitter` runs one thread: it takes every
checkpoint queued, applies each in a nested transaction of one write
transaction (a check that refuses one checkpoint aborts its nested
transaction only), commits once, and only then answers each caller. A
checkpoint is never acknowledged before the sync that holds it; when the
commit fails, every checkpoint of the batch fails with a StorageError
saying so.
"""

from __future__ import annotations

import logging
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


class _Pending:
    """One queued write and, once its batch is synced, its outcome."""

    __slots__ = ("apply", "done", "error", "guid", "result")

    def __init__(self, guid: str, apply: Callable[[lmdb.Transaction], Any]) -> None:
        self.guid = guid
        self.apply = apply
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitter:
    """The one thread that commits checkpoints to one store, in groups."""

    def __init__(self, env: StoreEnvironment) -> None:
        self._env = env
        self._cv = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._closed = False
        self.commits = 0  # transactions committed (each one sync)
        self.written = 0  # writes acknowledged
        self._thread = threading.Thread(
            target=self._run, name=f"storesite-{env.sid}-committer", daemon=True
        )
        self._thread.start()

    def submit(self, guid: str, apply: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``apply(txn)`` inside the next group transaction; return its result once
        that transaction is on disk. Its exception (a refused check) is raised here
        and changes nothing; a failed commit raises StorageError."""
        GUID.parse(guid)  # refuse text that is not a GUID before it becomes a key
        pending = _Pending(guid, apply)
        with self._cv:
            if self._closed:
                raise StorageError(f"storesite {self._env.sid} is closing; checkpoint not stored")
            self._queue.append(pending)
            self._cv.notify()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        result: T = pending.result
        return result

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            self._commit(batch)
            for pending in batch:
                pending.done.set()

    def _commit(self, batch: list[_Pending]) -> None:
        env = self._env.env
        try:
            txn = env.begin(write=True)
        except lmdb.Error as exc:
            self._fail(batch, exc)
            return
        try:
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
        log.error("storesite %s: a group commit of %d checkpoints failed: %s", sid, len(batch), exc)
        for pending in batch:
            if pending.error is None:
                pending.result = None
                pending.error = StorageError(
                    f"storesite {sid}: checkpoint of atom {pending.guid} not stored: the "
                    f"commit of {len(batch)} checkpoints written together failed: {exc}"
                )
