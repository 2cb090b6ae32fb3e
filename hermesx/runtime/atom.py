"""An atom: one running instance of a module, and its lifecycle (docs/DESIGN.md §3).

An :class:`Atom` is one instance of a :class:`LoadedModule` with its own
store, KV, reply table and mailbox, created or restored by a
:class:`~hermesx.runtime.engine.Runtime`. This module holds its public face
(``invoke``, ``deliver``, ``snapshot``, ``close``) and its lifecycle (set-up,
a daemon's ``hx_main`` thread, closing); the roles it is built from are listed
in hermesx.runtime.base.

Deadlines are absolute (docs/DESIGN.md §4): besides its CPU budget every activation
has a wall-clock deadline, the caller's (or ``default_timeout_s`` when the
caller gave none); a nested activation never outlives the one it runs inside.
Every wait of the atom (``recv``, ``invoke``, ``yield``, its queue, a snapshot's
wait for a turn) ends there with a clear error, and a blocked syscall abandoned
at its deadline unwinds the atom's wasm stack like a trap. Only ``hx_main``'s
own ``recv`` waits without a deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import wasmtime

from hermesx.core.errors import CallCycleError, HermesError, PayloadTooLargeError
from hermesx.core.replies import ReplyTable, ReplyWindow
from hermesx.core.snapshot import encode_state
from hermesx.runtime.activation import Frame, replay
from hermesx.runtime.delta import AtomChanges
from hermesx.runtime.host import AtomHost
from hermesx.runtime.imports import make_imports
from hermesx.runtime.instance import WasmFault, WasmInstance
from hermesx.runtime.mailbox import Job, Turn
from hermesx.runtime.modules import MAX_TABLE_ELEMENTS, LoadedModule, instantiate
from hermesx.runtime.syscalls import AtomSyscalls

if TYPE_CHECKING:
    from hermesx.runtime.engine import Runtime

__all__ = ["Atom"]

logger = logging.getLogger(__name__)

_STACK_POINTER = "__stack_pointer"
_monotonic = time.monotonic
_NOBODY: frozenset[str] = frozenset()


class Atom(AtomSyscalls, AtomChanges):
    """A running atom. Thread-safe; see hermesx.runtime.scheduling for the model."""

    def __init__(
        self, runtime: Runtime, module: LoadedModule, guid: str, host: AtomHost, reentrant: bool
    ) -> None:
        self.guid = guid
        self.module = module
        self.reentrant = reentrant
        self.kv = {}
        self._rt = runtime
        self._host = host
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._running = False
        self._waiters = deque()
        self._mail = deque()
        self._closed = False
        self.replies = ReplyTable(ReplyWindow(runtime.reply_table_size))
        self._kv_bytes = 0
        self._memory_allowance = -1
        self._memory_cap = runtime.memory_limit_bytes
        self._generation = 0
        self._frames = []
        self._under_way = set()
        self._next_future = 1
        self._sync_results = {}
        self._outgoing = {}
        self._abandoned = set()
        self._outgoing_running = 0
        self._outgoing_queue = deque()
        self._idle_scheduled = False
        self._daemon = None
        self._budget_s = runtime.deadline_ms / 1000
        self._max_payload = runtime.max_payload_bytes
        self._default_timeout_s = runtime.default_timeout_s
        self._takes_jobs = reentrant or module.is_daemon
        self._budget_ticks = runtime.ticks_for(self._budget_s)
        self._idle_frame = Frame("", (), 0.0, None)
        self._own_chain = (guid,)

        store = wasmtime.Store(runtime.engine)
        store.set_limits(memory_size=runtime.memory_limit_bytes, table_elements=MAX_TABLE_ELEMENTS)
        self._store = store
        self._inst = WasmInstance(store, runtime.max_payload_bytes, runtime)
        funcs, self._keep = make_imports(self._inst, module.imports, self)
        self._inst.set_deadline(self._budget_ticks)
        instance = instantiate(store, module, funcs, f"atom {guid}", runtime)
        self._inst.bind(instance)
        exports = instance.exports(store)
        self._globals = []
        for name, kind in module.mutable_globals:
            item = exports[name]
            assert isinstance(item, wasmtime.Global)
            self._globals.append((name, kind, item))
        sp = exports.get(_STACK_POINTER)
        self._sp = sp if isinstance(sp, wasmtime.Global) else None
        self._initial_sp = self._read_sp()
        self._idle_sp = self._initial_sp

    # -- public -------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Completed calls and handler runs (replays of request ids excluded)."""
        return self._generation

    @property
    def busy(self) -> bool:
        return self._running

    def invoke(
        self,
        method: str,
        args: bytes,
        request_id: str = "",
        chain: tuple[str, ...] = (),
        timeout: float | None = None,
        open_chain: frozenset[str] | tuple[str, ...] = frozenset(),
    ) -> bytes:
        """Run ``method`` with msgpack ``args``; return the msgpack result.

        ``timeout`` (seconds; the runtime's ``default_timeout_s`` when None)
        bounds the whole call, waits included. ``open_chain`` names the atoms of
        ``chain`` that take calls while blocked (reentrant or daemon atoms).
        Pass the four after ``args`` by keyword. They are not keyword-only:
        CPython fills a keyword-only parameter left out by a dict lookup apiece
        at every call (about 0.06 µs for the four), a plain one from a tuple.
        """
        seen = -1
        if request_id:
            replies = self.replies
            seen = replies.recorded  # read before the lookup: see ReplyTable.recorded
            record = replies.lookup(request_id, method, self.guid, args)
            if record is not None:
                return replay(record)
        if chain and self.guid in chain and not self.reentrant:
            raise CallCycleError(
                f"call cycle: atom {self.guid} is already on the call path "
                f"({' -> '.join(chain)}) and is not reentrant (method {method})"
            )
        if len(args) > self._max_payload:
            raise PayloadTooLargeError(
                f"atom {self.guid}: arguments of {method} are {len(args)} bytes, over the "
                f"{self._max_payload}-byte limit"
            )
        now = _monotonic()
        deadline = now + (self._default_timeout_s if timeout is None else timeout)
        if self._takes_jobs:
            return self._invoke_as_job(method, args, request_id, chain, deadline, open_chain, seen)
        opened = open_chain
        if type(opened) is not frozenset:  # the node passes a tuple, mostly empty
            opened = frozenset(opened) if opened else _NOBODY
        lock = self._lock
        # The turn, when the atom is free (what _enter does first), written out.
        # The lock's own acquire and release, not ``with``: a with-statement
        # costs a lookup and a bound method more each time.
        lock.acquire()
        try:
            free = not self._running and not self._waiters and not self._closed
            if free:
                self._running = True
        finally:
            lock.release()
        if not free:
            self._enter(None, deadline, method, chain, opened)
            now = _monotonic()  # it waited
        try:
            frames = self._frames
            if frames:  # an entry under way: not an atom that takes no jobs
                return self._run_recorded(
                    method, args, request_id, chain, deadline, opened, seen, now
                )
            if request_id and self.replies.recorded != seen:
                # A duplicate may have queued behind the first run of this id.
                record = self.replies.lookup(request_id, method, self.guid, args)
                if record is not None:
                    return replay(record)
            # The entry from idle, written out (_execute makes the others): every
            # call takes it. Its Frame is the atom's one idle frame, filled in again.
            budget = self._budget_s
            ticks = self._budget_ticks
            if deadline - now < budget:
                budget = max(0.0, deadline - now)
                ticks = self._rt.ticks_for(budget)
            frame = self._idle_frame
            frame.method = method
            frame.chain = (*chain, self.guid) if chain else self._own_chain
            frame.open_chain = opened
            frame.budget = budget
            frame.deadline = deadline
            frame.used = 0.0
            frame.reply = None
            frame.too_large = 0
            frame.bad_slot = None
            frame.log_bytes = frame.log_lines = 0
            frame.log_cut = False
            frame.seg_start = now
            frames.append(frame)
            inst = self._inst
            try:
                try:
                    status = inst.invoke(method.encode(), args, True, ticks)
                except WasmFault as fault:
                    self._unwind_stack(self._idle_sp)
                    raise self._translate(fault, method) from fault
                finally:
                    frames.pop()
                in_slot = inst.reply
                if not status and type(in_slot) is bytes and frame.bad_slot is None:
                    result = in_slot  # how a call of an atom with an inbox ends
                else:
                    result = self._reply_of(frame, status, in_slot, method)
            except HermesError as exc:
                self._generation += 1
                if request_id:
                    self._record(request_id, exc.kind, str(exc).encode("utf-8"), method, args)
                raise
            self._generation += 1
            if request_id:
                self._record(request_id, "", result, method, args)
            return result
        finally:
            # The turn is given up without the lock: the atom is marked free first
            # and the queue and mailbox are read after, while a caller queues (or a
            # sender posts mail) under the lock first and reads ``_running`` after.
            # In the one order the GIL gives these steps, either this thread sees
            # the caller or the mail (and wakes or schedules it under the lock), or
            # the caller's next look, still under the lock, finds the atom free.
            self._running = False
            if self._waiters or self._mail:
                self._after_turn()

    def _invoke_as_job(
        self,
        method: str,
        args: bytes,
        request_id: str,
        chain: tuple[str, ...],
        deadline: float,
        open_chain: frozenset[str] | tuple[str, ...],
        seen: int,
    ) -> bytes:
        """A call to a reentrant or daemon atom: a job it may run at a blocking point."""
        opened = frozenset(open_chain)
        job = Job(method, args, request_id, chain, deadline, open_chain=opened)
        if not self._enter(job, deadline, method, chain, opened):
            if job.error is not None:
                raise job.error
            return job.result
        try:
            return self._run_recorded(method, args, request_id, chain, deadline, opened, seen)
        finally:
            self._leave()

    def snapshot(self, timeout: float | None = None) -> bytes:
        """The atom's whole state (see hermesx.core.snapshot)."""
        return self.snapshot_with_generation(timeout)[0]

    def snapshot_with_generation(self, timeout: float | None = None) -> tuple[bytes, int]:
        """A snapshot and the :attr:`generation` it holds, read in the same turn.

        Taken when no call runs; for daemon and reentrant atoms also at a
        blocking point of a running call (a reentrant atom's call may wait on
        a callback whose own checkpoint needs this snapshot). Waits for its
        turn at most ``timeout`` seconds (the runtime's default when None).
        Reading :attr:`generation` beside :meth:`snapshot` could see a call
        that ended in between; checkpoint ordering needs the exact one.
        """
        wait = self._rt.default_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + wait
        job = None
        if self.module.is_daemon or self.reentrant:
            job = Job("snapshot", b"", "", (), deadline, snapshot=True)
        if not self._enter(job, deadline, "snapshot"):
            assert job is not None
            if job.error is not None:
                raise job.error
            return job.result, job.generation
        try:
            return encode_state(self._capture_state()), self._generation
        finally:
            self._leave()

    def close(self) -> None:
        """Stop a daemon, refuse further calls, fail the queued ones."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
            for waiter in self._waiters:
                if isinstance(waiter, Turn):
                    waiter.event.set()
        daemon = self._daemon
        if daemon is not None and daemon is not threading.current_thread():
            daemon.join(timeout=self._budget_s + 1)
            if daemon.is_alive():
                logger.warning("atom %s: daemon did not stop within its deadline", self.guid)

    # -- daemons ------------------------------------------------------------

    def _start_daemon(self) -> None:
        with self._cv:
            self._running = True
        self._daemon = threading.Thread(
            target=self._daemon_main, name=f"hx-daemon-{self.guid}", daemon=True
        )
        self._daemon.start()

    def _daemon_main(self) -> None:
        inst = self._inst
        frame = Frame("hx_main", (self.guid,), self._budget_s, None)
        frame.per_segment = True
        sp = self._entry_sp()
        self._frames.append(frame)
        frame.seg_start = time.monotonic()
        inst.set_deadline(self._budget_ticks)
        try:
            inst.call("hx_main", (), False)
            logger.info("atom %s: hx_main returned", self.guid)
        except WasmFault as fault:
            self._unwind_stack(sp)
            logger.error(
                "atom %s: daemon stopped: %s", self.guid, self._translate(fault, "hx_main")
            )
        except Exception:
            logger.exception("atom %s: daemon failed inside the runtime", self.guid)
        finally:
            inst.clear_reply()
            self._frames.pop()
            self._leave()
