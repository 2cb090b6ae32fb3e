"""The syscalls an atom imports, as the atom carries them out (docs/DESIGN.md §3, ABI.md).

hermesx.runtime.imports decodes each host function's arguments and calls the
``sys_*`` method of the atom here. Grouped as: the call's own reply and log;
the KV (bounded by the memory cap); invokes to other atoms, which run on the
runtime's syscall pool, at most :data:`MAX_OUTGOING_PER_ATOM` of one atom at
once, while the atom waits at a blocking point; ``send``, ``recv`` and
``yield``; and the name service, ``move_to`` and ``checkpoint`` through the
host. A syscall that acts outside the atom ends a call whose atom was dropped
or whose deadline passed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from hermesx.core.errors import (
    CallCycleError,
    CapacityError,
    DeadlineExceededError,
    HermesError,
    MemoryLimitError,
)
from hermesx.observe import atomlog
from hermesx.runtime.abi import LOG_LEVELS, STATUS_ERROR, STATUS_OK, pack_strings
from hermesx.runtime.host import CallContext
from hermesx.runtime.mailbox import FutureDone
from hermesx.runtime.memory import KV_ENTRY_OVERHEAD
from hermesx.runtime.scheduling import AtomScheduling

__all__ = [
    "MAX_CALL_DEPTH",
    "MAX_LOG_BYTES_PER_CALL",
    "MAX_LOG_LINES_PER_CALL",
    "MAX_OUTGOING_PER_ATOM",
    "AtomSyscalls",
]

logger = logging.getLogger(__name__)
# What atoms log through the ``log`` syscall goes out under the atom module's
# name, where operators look for it.
atom_log = logging.getLogger("hermesx.runtime.atom")

# Log output of one call (or handler run, or a daemon's stretch between two
# blocking points): more is dropped after one line that says so.
MAX_LOG_BYTES_PER_CALL = 64 * 1024
MAX_LOG_LINES_PER_CALL = 1000
# Outgoing invokes one atom may have on the node's syscall pool at once.
MAX_OUTGOING_PER_ATOM = 8
# Atoms on one chain of calls, each waiting on the next. Every link holds a thread
# of its node's syscall pool (32) while it waits: a chain of 40 atoms on one node
# took all of them and waited on itself until its deadline, and the node's other
# atoms' invokes queued behind it (docs/DESIGN.md §3).
MAX_CALL_DEPTH = 16

# Set on the syscall pool's threads while they run an atom's outgoing invokes.
_POOL = threading.local()


class AtomSyscalls(AtomScheduling):
    """The behaviour behind each ``hx`` import (the atom side of imports.Syscalls)."""

    def _context(self) -> CallContext:
        if not self._frames:
            return CallContext(self.guid, (self.guid,), None)
        frame = self._frames[-1]
        timeout = None if frame.deadline is None else max(0.0, frame.deadline - time.monotonic())
        return CallContext(self.guid, frame.chain, timeout, tuple(sorted(frame.open_chain)))

    # -- the call's reply and log ----------------------------------------------

    def sys_reply(self, data: bytes) -> None:
        if self._frames:
            frame = self._frames[-1]
            frame.reply = data
            frame.too_large = 0

    def sys_reply_too_large(self, length: int) -> None:
        if self._frames:
            self._frames[-1].too_large = length

    def sys_log(self, level: int, text: str) -> None:
        if self._frames:
            frame = self._frames[-1]
            if frame.log_cut:
                return
            frame.log_lines += 1
            frame.log_bytes += len(text)
            if frame.log_lines > MAX_LOG_LINES_PER_CALL or frame.log_bytes > MAX_LOG_BYTES_PER_CALL:
                frame.log_cut = True
                note = (
                    f"atom {self.guid}: {frame.method} logged more than {MAX_LOG_LINES_PER_CALL} "
                    f"lines or {MAX_LOG_BYTES_PER_CALL} bytes: the rest of its log output is "
                    "dropped"
                )
                # Once a call, and within the atom's share of the node's log (§12).
                if atomlog.BOOK.to_node_log(self.guid, note):
                    atom_log.warning("%s", note)
                return
        held_back = atomlog.BOOK.record(self.guid, level, text)
        if held_back == 0:
            atom_log.log(LOG_LEVELS.get(level, logging.INFO), "atom %s: %s", self.guid, text)
        elif held_back > 0:  # the atom's budget in the node's log came back (§12)
            atom_log.log(
                LOG_LEVELS.get(level, logging.INFO),
                "atom %s: %s [%d earlier lines of this atom not written here: over its share]",
                self.guid,
                text,
                held_back,
            )

    # -- the KV ----------------------------------------------------------------

    def sys_kv_put(self, key: bytes, value: bytes) -> int:
        self._check_going_on("kv_put")
        old = self.kv.get(key)
        grow = len(value) - (len(old) if old is not None else -(len(key) + KV_ENTRY_OVERHEAD))
        if grow > 0:
            cap = self._rt.memory_limit_bytes
            if self._inst.memory_size + self._host_bytes() + grow > cap:
                what = self._frames[-1].method if self._frames else "the atom"
                raise MemoryLimitError(
                    f"atom {self.guid}: {what} hit the memory cap of {cap} bytes: kv_put of a "
                    f"{len(key)}-byte key and {len(value)}-byte value refused "
                    f"({self._usage_text()}); the KV keeps its previous contents"
                )
        self.kv[key] = value
        self._kv_bytes += grow
        self._limit_memory()
        return STATUS_OK

    def sys_kv_del(self, key: bytes) -> int:
        self._check_going_on("kv_del")
        old = self.kv.pop(key, None)
        if old is None:
            return STATUS_ERROR
        self._kv_bytes -= len(key) + len(old) + KV_ENTRY_OVERHEAD
        self._limit_memory()
        return STATUS_OK

    # -- invokes of other atoms ------------------------------------------------

    def _start_host_invoke(self, target: str, method: str, args: bytes, sync: bool) -> int:
        self._check_going_on("invoke" if sync else "invoke_async")
        ctx = self._context()
        if not sync:
            # Nobody on the chain waits for an asynchronous call: none of them
            # is stuck behind it (for the wait-cycle check of its target).
            ctx = dataclasses.replace(ctx, open_chain=ctx.chain)
        end = None if ctx.timeout is None else time.monotonic() + ctx.timeout
        host = self._host
        with self._cv:
            future_id = self._next_future
            self._next_future += 1
            if sync:
                # Registered before the request leaves (see _check_wait_cycle).
                self._outgoing[future_id] = target

        refused: list[HermesError] = []

        def run() -> None:
            try:
                if refused:
                    raise refused[0]
                if len(ctx.chain) >= MAX_CALL_DEPTH:
                    raise CallCycleError(
                        f"call chain too deep: atom {self.guid} calls {target}.{method} "
                        f"with {len(ctx.chain)} atoms already waiting on one another "
                        f"(at most {MAX_CALL_DEPTH} on a chain)"
                    )
                call_ctx = ctx
                if end is not None:
                    # It may have waited for one of the atom's outgoing slots.
                    left = end - time.monotonic()
                    if left <= 0:
                        raise DeadlineExceededError(
                            f"atom {self.guid}: invoke of {target}.{method} waited past "
                            "its deadline for a free outgoing slot"
                        )
                    call_ctx = dataclasses.replace(ctx, timeout=left)
                status, data = 0, host.invoke(call_ctx, target, method, args)
            except HermesError as exc:
                status, data = 1, f"{exc.kind}: {exc}".encode()
            except Exception as exc:
                logger.exception(
                    "atom %s: invoke %s.%s failed in the host", self.guid, target, method
                )
                status, data = 1, f"hermes: {exc}".encode()
            with self._cv:
                if sync:
                    # Answered: no longer a wait of this atom.
                    self._outgoing.pop(future_id, None)
                    if future_id in self._abandoned:
                        self._abandoned.discard(future_id)
                    else:
                        self._sync_results[future_id] = (status, data)
                else:
                    self._mail.append(FutureDone(future_id, status, data))
                self._cv.notify_all()
                idle = not sync and not self._running and not self.module.is_daemon
            if idle:
                self._schedule_idle()

        submitted = self._submit_outgoing(run)
        if submitted is None:
            logger.info(
                "atom %s: invoke %s.%s not started: runtime closed", self.guid, target, method
            )
            with self._cv:
                self._outgoing.pop(future_id, None)
            return -1
        if not submitted:
            refused.append(
                CapacityError(
                    f"atom {self.guid}: invoke of {target}.{method} refused: all "
                    f"{self._rt.syscall_threads} threads of node {self.node_name} for "
                    "outgoing calls are taken, and this call, itself on one of them, would "
                    "wait on itself"
                )
            )
            run()  # answers the refusal at once, as if it had run
        return future_id

    def _submit_outgoing(self, run: Callable[[], None]) -> bool | None:
        """Run ``run`` on the shared syscall pool, at most MAX_OUTGOING_PER_ATOM at once.

        An atom's further invokes wait in its own FIFO, not in the pool's
        queue: one atom calling a slow target cannot take the threads every
        other atom of the node needs for its own outgoing calls. False when
        every thread of the pool is taken and this atom runs on one of them
        (a link of a chain of calls): queued, it could wait on the very
        calls waiting on it. None when the runtime is closed.
        """
        with self._cv:
            if self._outgoing_running >= MAX_OUTGOING_PER_ATOM:
                self._outgoing_queue.append(run)
                return True
            self._outgoing_running += 1
        rt = self._rt
        with rt.syscall_tasks_lock:
            full = rt.syscall_tasks >= rt.syscall_threads and getattr(_POOL, "on", False)
            if not full:
                rt.syscall_tasks += 1
        if full:
            with self._cv:
                self._outgoing_running -= 1
            return False
        try:
            rt.syscall_pool.submit(self._outgoing_slot, run)
        except RuntimeError:
            with rt.syscall_tasks_lock:
                rt.syscall_tasks -= 1
            with self._cv:
                self._outgoing_running -= 1
            return None
        return True

    def _outgoing_slot(self, run: Callable[[], None] | None) -> None:
        _POOL.on = True
        try:
            while run is not None:
                try:
                    run()
                finally:
                    with self._cv:
                        run = self._outgoing_queue.popleft() if self._outgoing_queue else None
                        if run is None:
                            self._outgoing_running -= 1
        finally:
            _POOL.on = False
            rt = self._rt
            with rt.syscall_tasks_lock:
                rt.syscall_tasks -= 1

    def sys_invoke(self, target: str, method: str, args: bytes) -> tuple[int, bytes]:
        end = self._wait_deadline()
        if end is not None and end <= time.monotonic():
            raise self._deadline_error(f"invoke of {target}.{method}")
        future_id = self._start_host_invoke(target, method, args, sync=True)
        if future_id < 0:
            return STATUS_ERROR, f"unreachable: node {self.node_name} is shutting down".encode()
        try:
            with self._blocked():
                timeout = None if end is None else max(0.0, end - time.monotonic())
                self._pump(block=True, timeout_s=timeout, wait_sync=future_id)
            with self._cv:
                result = self._sync_results.pop(future_id, None)
                if result is None:
                    self._abandoned.add(future_id)
        finally:
            with self._cv:
                self._outgoing.pop(future_id, None)
            self._cycle_call_left(target)
        if result is None:
            # Raised through the atom's frames like a trap: they unwind, the call fails.
            raise self._deadline_error(f"invoke of {target}.{method}")
        return result

    def sys_invoke_async(self, target: str, method: str, args: bytes) -> int:
        return self._start_host_invoke(target, method, args, sync=False)

    # -- send, recv, yield -----------------------------------------------------

    def sys_send(self, target: str, code: int, payload: bytes) -> int:
        self._check_going_on("send")
        with self._blocked():
            try:
                self._host.send(self._context(), target, code, payload)
            except HermesError as exc:
                logger.info("atom %s: send to %s failed: %s", self.guid, target, exc)
                return STATUS_ERROR
        return STATUS_OK

    def sys_recv(self, timeout_ms: int) -> int:
        timeout = None if timeout_ms < 0 else timeout_ms / 1000
        end = self._wait_deadline()
        if end is None:  # hx_main's own recv: a daemon may wait for ever
            with self._blocked():
                return self._pump(block=True, timeout_s=timeout, wait_sync=None)
        left = end - time.monotonic()
        what = f"recv({timeout_ms})"
        if left <= 0:
            raise self._deadline_error(what)
        capped = timeout is None or timeout >= left
        with self._blocked():
            ran = self._pump(block=True, timeout_s=left if capped else timeout, wait_sync=None)
        if ran == 0 and capped:
            # Raised through the atom's frames like a trap: they unwind, the call fails.
            raise self._deadline_error(what)
        return ran

    def sys_yield(self) -> int:
        end = self._wait_deadline()
        if end is not None and end <= time.monotonic():
            raise self._deadline_error("a yield loop")
        with self._blocked():
            return max(0, self._pump(block=False, timeout_s=None, wait_sync=None))

    # -- names, moves, checkpoints (through the host) --------------------------

    def sys_lookup(self, mode: str, scope: str | None, pattern: str) -> tuple[int, bytes]:
        self._check_going_on("lookup")
        with self._blocked():
            try:
                found = self._host.lookup(self._context(), mode, pattern, scope)
            except HermesError as exc:
                return STATUS_ERROR, f"{exc.kind}: {exc}".encode()
        return STATUS_OK, pack_strings(found)

    def sys_alias(self, add: bool, scope: str, alias: str) -> int:
        self._check_going_on("alias_add" if add else "alias_remove")
        with self._blocked():
            try:
                if add:
                    self._host.alias_add(self._context(), scope, alias)
                else:
                    self._host.alias_remove(self._context(), scope, alias)
            except HermesError as exc:
                logger.info("atom %s: alias %s/%s: %s", self.guid, scope, alias, exc)
                return STATUS_ERROR
        return STATUS_OK

    def sys_move_to(self, node: str) -> int:
        try:
            self._host.move_to(self._context(), node)
        except HermesError as exc:
            logger.warning("atom %s: move_to %s refused: %s", self.guid, node, exc)
            return STATUS_ERROR
        return STATUS_OK

    def sys_checkpoint(self) -> int:
        try:
            self._host.checkpoint(self._context())
        except HermesError as exc:
            logger.info("atom %s: checkpoint refused: %s", self.guid, exc)
            return STATUS_ERROR
        return STATUS_OK
