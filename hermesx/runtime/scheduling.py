"""Whose turn it is in an atom, and its mailbox (docs/DESIGN.md §3, §4).

Execution model (Radon's cooperative model): one thread runs an atom at a
time. Calls to a busy atom queue FIFO. A blocking syscall (``invoke``,
``recv``, ``yield``) pumps the atom's mailbox, so interrupt and future handlers
(and, for reentrant and daemon atoms, incoming invocations) run re-entrantly on
the blocked thread at that point and at no other. Every wait for a turn ends at
the caller's deadline, and a caller that is itself an atom fails fast on a
wait cycle across call chains. Mail that arrives while a reactive atom is idle
is delivered on the runtime's idle pool.
"""

from __future__ import annotations

import logging
import threading
import time

from hermesx.core.errors import (
    AtomTrapError,
    CallCycleError,
    CapacityError,
    DeadlineExceededError,
    HermesError,
    UnreachableError,
)
from hermesx.core.identity import GUID
from hermesx.core.replies import call_digest
from hermesx.core.snapshot import encode_state, new_reply_record
from hermesx.runtime.host import CallContext
from hermesx.runtime.mailbox import (
    DONE,
    MAX_MAIL_BYTES,
    MAX_MAIL_ITEMS,
    PENDING,
    TAKEN,
    Interrupt,
    Job,
    Mail,
    Turn,
    send_method,
)
from hermesx.runtime.state import AtomSnapshots

__all__ = ["CYCLE_RECHECK_S", "AtomScheduling"]

logger = logging.getLogger(__name__)

# How often a caller queued behind a busy atom looks again for a wait cycle.
CYCLE_RECHECK_S = 0.2

# Calls of this process being failed to break a wait cycle: (calling atom, atom called)
# -> when. Two calls crossing each other may both find the cycle at once; the second to
# look sees that the first is being failed (its holder comes free) and waits instead of
# failing too. A record goes as soon as the failed call leaves its caller's outgoing set
# (_cycle_call_left): a newer cycle between the same atoms is found at once. One whose
# caller runs elsewhere (another node) goes after CYCLE_BROKEN_S.
_CYCLES_BROKEN: dict[tuple[str, str], float] = {}
_CYCLES_LOCK = threading.Lock()
CYCLE_BROKEN_S = 1.0


class AtomScheduling(AtomSnapshots):
    """Taking and leaving the atom, queueing behind it, and running its mail."""

    def deliver(self, code: int, payload: bytes, request_id: str = "") -> bool:
        """Queue an interrupt for the atom's ``hx_interrupt`` (from ``send``).

        A message with a ``request_id`` is delivered once (docs/DESIGN.md §4 "Exactly
        once"): its id is recorded in the reply table together with the message queued,
        under the lock every capture of the state reads both under, so a snapshot holds
        both or neither. False: a copy of it was delivered before; nothing is queued.
        """
        with self._cv:
            if self._closed:
                raise UnreachableError(f"atom {self.guid} is closed on node {self.node_name}")
            if request_id:
                method = send_method(code)
                replies = self.replies
                if replies.lookup(request_id, method=method, guid=self.guid, args=payload):
                    return False
            # The mailbox lives in the host and travels in every snapshot: bounded.
            if len(self._mail) >= MAX_MAIL_ITEMS:
                raise CapacityError(
                    f"atom {self.guid}'s mailbox is full ({len(self._mail)} messages waiting); "
                    "message refused"
                )
            queued = sum(len(m.payload) for m in self._mail if isinstance(m, Interrupt))
            if queued + len(payload) > MAX_MAIL_BYTES:
                raise CapacityError(
                    f"atom {self.guid}'s mailbox is full ({queued} bytes waiting, at most "
                    f"{MAX_MAIL_BYTES}); a message of {len(payload)} bytes refused"
                )
            if request_id:
                digest = call_digest(method, payload)
                replies.record(new_reply_record(request_id, "", b"", 0, digest))
            self._mail.append(Interrupt(code, payload))
            self._cv.notify_all()
            idle = not self._running and not self.module.is_daemon
        if idle:
            self._schedule_idle()
        return True

    # -- entering and leaving ----------------------------------------------

    def _closed_error(self) -> UnreachableError:
        return UnreachableError(f"atom {self.guid} is closed on node {self.node_name}")

    def _turn_missed(self, method: str) -> DeadlineExceededError:
        # Not a "timeout": retrying elsewhere would only queue here again.
        return DeadlineExceededError(
            f"atom {self.guid} stayed busy: {method} waited past its deadline for its turn"
        )

    def _enter(
        self,
        job: Job | None,
        deadline: float | None,
        method: str,
        chain: tuple[str, ...] = (),
        open_chain: frozenset[str] = frozenset(),
    ) -> bool:
        """Take the atom for this thread (True), or return False once the atom's
        own thread ran ``job`` at a blocking point."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if not self._running and not self._waiters:
                self._running = True
                return True
            if job is None:
                turn = Turn()
                self._waiters.append(turn)
        if job is None:
            return self._wait_turn(turn, deadline, method, chain, open_chain)
        with self._cv:
            ticket: object = job
            self._waiters.append(ticket)
            self._mail.append(job)
            self._cv.notify_all()
            try:
                while True:
                    if job.state == DONE:
                        return False
                    if job.state == PENDING:
                        if self._closed:
                            raise self._closed_error()
                        if not self._running and self._waiters[0] is ticket:
                            self._mail.remove(job)
                            job.state = TAKEN
                            self._running = True
                            return True
                    wait: float | None = None
                    if deadline is not None and job.state == PENDING:
                        wait = deadline - time.monotonic()
                        if wait <= 0:
                            self._mail.remove(job)
                            raise self._turn_missed(method)
                    self._cv.wait(wait)
            finally:
                self._waiters.remove(ticket)
                self._wake_next()

    def _wait_turn(
        self,
        turn: Turn,
        deadline: float | None,
        method: str,
        chain: tuple[str, ...],
        open_chain: frozenset[str],
    ) -> bool:
        """Queue in FIFO order; only the head of the queue is woken when the atom frees up
        (waking every queued caller on each call costs a thread switch apiece).

        A caller that is itself an atom (``chain``) checks, on arrival and then
        every ``CYCLE_RECHECK_S``, that the call holding this atom does not wait
        on an atom of its chain: that is a wait cycle across call chains, and
        it fails fast instead of waiting out the deadline.
        """
        # Atoms of the caller's chain that wait for this call and take no other.
        stuck = frozenset(chain) - open_chain - {self.guid}
        took = False
        try:
            while True:
                if stuck:
                    self._check_wait_cycle(stuck, chain, method)
                with self._cv:
                    if self._closed:
                        raise self._closed_error()
                    if not self._running and self._waiters[0] is turn:
                        self._running = True
                        took = True
                        return True
                    turn.event.clear()
                wait: float | None = None
                if deadline is not None:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        raise self._turn_missed(method)
                if stuck:
                    wait = CYCLE_RECHECK_S if wait is None else min(wait, CYCLE_RECHECK_S)
                turn.event.wait(wait)
        finally:
            with self._cv:
                self._waiters.remove(turn)
                if not took:
                    self._wake_next()

    def _check_wait_cycle(self, stuck: frozenset[str], chain: tuple[str, ...], method: str) -> None:
        """Raise CallCycleError if the call holding this atom waits on an atom in ``stuck``.

        Sound without any global view: every atom of ``stuck`` is blocked in a
        synchronous invoke that (through the chain) waits for this queued
        call, takes no other call meanwhile, and this call can start only when
        the holder finishes; if the holder waits on one of them, none of them
        can ever go on. A target is registered before its request leaves, so of
        two calls crossing each other at least one finds the other's wait; when
        both do at once, the second to look finds the first failed (the holder it
        waits behind comes free) and waits on, so one chain fails and the other
        goes on. Longer cycles (through atoms on neither chain) still end at the
        deadline.
        """
        with self._cv:
            targets = list(self._outgoing.values())
        waited_on = [g for g in map(self._target_guid, targets) if g in stuck]
        if not waited_on:
            return
        with _CYCLES_LOCK:
            now = time.monotonic()
            for key in [k for k, t in _CYCLES_BROKEN.items() if now - t > CYCLE_BROKEN_S]:
                del _CYCLES_BROKEN[key]
            for guid in waited_on:
                if (self.guid, guid) in _CYCLES_BROKEN:
                    continue  # the holder's call to it is being failed: it comes free
                _CYCLES_BROKEN[(chain[-1], self.guid)] = now
                raise CallCycleError(
                    f"wait cycle: atom {self.guid} is busy with a call that waits on atom "
                    f"{guid}, which waits (call path {' -> '.join(chain)}) for this call to "
                    f"{self.guid} ({method}); neither could ever go on"
                )

    def _cycle_call_left(self, target: str) -> None:
        """This atom's synchronous call to ``target`` left its outgoing set: a record that
        it was being failed to break a wait cycle (_check_wait_cycle) is spent."""
        if not _CYCLES_BROKEN:  # the common case: no cycle broken lately
            return
        with _CYCLES_LOCK:
            if not any(caller == self.guid for caller, _ in _CYCLES_BROKEN):
                return
        guid = self._target_guid(target)  # a lookup (outside the lock) for a name
        with _CYCLES_LOCK:
            _CYCLES_BROKEN.pop((self.guid, guid), None)

    def _target_guid(self, target: str) -> str:
        if GUID.looks_like(target):
            return target
        try:
            found = self._host.lookup(
                CallContext(self.guid, (self.guid,), None), "exact", target, None
            )
        except HermesError:
            return ""
        return found[0] if found else ""

    def _wake_next(self) -> None:
        """Under ``_cv``: let the head of the queue look again."""
        if not self._waiters:
            return
        head = self._waiters[0]
        if isinstance(head, Turn):
            head.event.set()
        else:
            self._cv.notify_all()

    def _leave(self) -> None:
        with self._lock:
            self._running = False
        self._after_turn()

    def _after_turn(self) -> None:
        """After the atom was marked free: the head of the queue looks again, and mail
        waiting is delivered (a daemon's by its own ``recv``)."""
        with self._lock:
            if self._waiters:
                self._wake_next()
            pending = bool(self._mail) and not self._closed and not self.module.is_daemon
        if pending:
            self._schedule_idle()

    def _has_mail(self) -> bool:
        with self._cv:
            return bool(self._mail)

    def _pump(self, *, block: bool, timeout_s: float | None, wait_sync: int | None) -> int:
        """Run mailbox items on this (the atom's) thread; see module docstring.

        Returns how many ran; -1 when the atom is stopping (for ``recv``).
        """
        ran = 0
        end = None if timeout_s is None else time.monotonic() + timeout_s
        cv = self._cv
        while True:
            with cv:
                if wait_sync is not None:
                    if wait_sync in self._sync_results:
                        return ran
                elif self._closed:
                    return -1 if ran == 0 and block else ran
                if self._mail:
                    item = self._mail.popleft()
                    if isinstance(item, Job):
                        item.state = TAKEN
                else:
                    if wait_sync is None and (ran > 0 or not block):
                        return ran
                    wait = None if end is None else end - time.monotonic()
                    if wait is not None and wait <= 0:
                        return ran
                    cv.wait(wait)
                    continue
            ran += 1
            self._dispatch(item)

    def _dispatch(self, item: Mail) -> None:
        if not isinstance(item, Job):
            self._run_handler(item)
            return
        try:
            if item.snapshot:
                item.result = encode_state(self._capture_state())
                item.generation = self._generation
            else:
                item.result = self._run_recorded(
                    item.method,
                    item.args,
                    item.request_id,
                    item.chain,
                    item.deadline,
                    item.open_chain,
                )
        except HermesError as exc:
            item.error = exc
        except Exception as exc:
            logger.exception("atom %s: %s failed inside the runtime", self.guid, item.method)
            item.error = AtomTrapError(f"atom {self.guid}: {item.method} failed: {exc}")
        with self._cv:
            item.state = DONE
            self._cv.notify_all()

    # -- reactive idle delivery ---------------------------------------------

    def _schedule_idle(self) -> None:
        with self._cv:
            if self._idle_scheduled or self._closed:
                return
            self._idle_scheduled = True
        try:
            self._rt.idle_pool.submit(self._deliver_idle)
        except RuntimeError:
            logger.debug("atom %s: runtime closed; interrupts stay queued", self.guid)

    def _deliver_idle(self) -> None:
        with self._cv:
            self._idle_scheduled = False
            if not self._mail or self._closed:
                return
            if self._running or self._waiters:
                # Never wait for a busy atom here (a call may hold it until its
                # deadline, and this pool serves every atom): the holder's
                # blocking points deliver the mail, and its _leave schedules us again.
                return
            self._running = True
        try:
            self._pump(block=False, timeout_s=None, wait_sync=None)
        except Exception:
            logger.exception("atom %s: interrupt delivery failed", self.guid)
        finally:
            self._leave()
