"""Running an atom's code: activations, their deadlines and CPU budgets, traps.

See docs/DESIGN.md §3, §4.

An activation is one entry into the atom's code: a call (``hx_invoke``), its
``hx_init``, an interrupt or future handler, or a daemon's ``hx_main``. Each
has a :class:`Frame` with its call chain, its CPU budget (the epoch deadline,
which stands still while the atom waits in a syscall: :meth:`_blocked`) and its
wall-clock deadline, never later than the activation it runs inside. A trap
unwinds the C stack pointer to where the entry found it and becomes the
:class:`HermesError` that says what happened (deadline, memory cap, a bad
``hx_alloc``, a plain trap).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from hermesx.core.errors import (
    AtomTrapError,
    CallTimeoutError,
    DeadlineExceededError,
    HermesError,
    MemoryLimitError,
    MethodError,
    PayloadTooLargeError,
    UnreachableError,
    error_from_wire,
)
from hermesx.core.replies import call_digest
from hermesx.core.snapshot import ReplyRecord, new_reply_record
from hermesx.runtime.instance import BadAllocError, BadPointerError, WasmFault
from hermesx.runtime.mailbox import FutureDone, Interrupt
from hermesx.runtime.memory import AtomMemory
from hermesx.runtime.modules import PAGE

__all__ = ["AtomActivations", "Frame", "replay"]

logger = logging.getLogger(__name__)

_MSGPACK_NIL = b"\xc0"


class Frame:
    """One activation of the atom's code: a call, a handler or ``hx_main``."""

    __slots__ = (
        "bad_slot",
        "budget",
        "chain",
        "deadline",
        "log_bytes",
        "log_cut",
        "log_lines",
        "method",
        "open_chain",
        "per_segment",
        "reply",
        "seg_start",
        "too_large",
        "used",
    )

    def __init__(
        self,
        method: str,
        chain: tuple[str, ...],
        budget: float,
        deadline: float | None,
        open_chain: frozenset[str] = frozenset(),
    ) -> None:
        self.method = method
        self.chain = chain
        # Atoms of the chain that run incoming calls while blocked (reentrant
        # or daemon): a call waiting on one of them is not stuck behind it.
        self.open_chain = open_chain
        self.budget = budget  # CPU seconds this activation may use
        self.used = 0.0
        self.seg_start = 0.0
        self.deadline = deadline  # monotonic time the caller gives up, if any
        self.reply: bytes | None = None
        self.too_large = 0
        # A bad reply slot found before a nested entry: this entry fails with it.
        self.bad_slot: str | None = None
        # hx_main's budget renews at each blocking point.
        self.per_segment = False
        self.log_bytes = 0
        self.log_lines = 0
        self.log_cut = False


def replay(record: ReplyRecord) -> bytes:
    """The recorded outcome of a request id, again: its result, or its error raised."""
    if not record.error_kind:
        return record.payload
    raise error_from_wire(record.error_kind, record.payload.decode("utf-8", errors="replace"))


class AtomActivations(AtomMemory):
    """Entering the atom's code and turning what happens there into results and errors."""

    def _run_recorded(
        self,
        method: str,
        args: bytes,
        request_id: str,
        chain: tuple[str, ...],
        deadline: float | None,
        open_chain: frozenset[str] = frozenset(),
        seen: int = -1,
        now: float = 0.0,
    ) -> bytes:
        """Run a call and keep its outcome under ``request_id`` (the reply table).

        ``seen`` is the table's count of recorded outcomes read before the
        caller's own lookup of ``request_id`` found it new (-1: no lookup);
        ``now`` as for :meth:`_execute`.
        """
        replies = self.replies
        if request_id and replies.recorded != seen:
            # A duplicate may have queued behind the first run of this id.
            record = replies.lookup(request_id, method, self.guid, args)
            if record is not None:
                return replay(record)
        # An atom that runs calls at its blocking points (reentrant, daemon) could run
        # a retry of a call there, while that call's first run waits: not run twice.
        under_way = self._under_way if request_id and self._takes_jobs else None
        if under_way is not None:
            if request_id in under_way:
                raise CallTimeoutError(
                    f"atom {self.guid}: request id {request_id} ({method}) is still running; "
                    "not run again: its outcome is recorded once it ends, send it again then"
                )
            under_way.add(request_id)
        try:
            result = self._execute(method, args, chain, deadline, open_chain, now)
        except HermesError as exc:
            self._generation += 1
            if request_id:
                self._record(request_id, exc.kind, str(exc).encode("utf-8"), method, args)
            raise
        finally:
            if under_way is not None:
                under_way.discard(request_id)
        self._generation += 1
        if request_id:
            self._record(request_id, "", result, method, args)
        return result

    def _record(self, request_id: str, kind: str, payload: bytes, method: str, args: bytes) -> None:
        """Keep a call's outcome under its request id; the memory cap follows the table."""
        self._limit_memory(
            self.replies.record(
                new_reply_record(request_id, kind, payload, 0, call_digest(method, args))
            )
        )

    def _execute(
        self,
        method: str,
        args: bytes,
        chain: tuple[str, ...],
        deadline: float | None,
        open_chain: frozenset[str] = frozenset(),
        now: float = 0.0,
    ) -> bytes:
        """One entry into ``hx_invoke``: the call's result, or the error it ends with.

        ``now``: the monotonic clock the caller read just before, on a call from
        idle (0: read here). Every call runs this, written flat: each Python call
        and each object made costs a tenth of a µs or more here.
        """
        inst = self._inst
        frames = self._frames
        budget = self._budget_s
        ticks = self._budget_ticks
        if frames:
            idle = False
            deadline = self._nested_deadline(deadline)
            sp = self._read_sp()
            self._keep_reply()
            now = time.monotonic()
        else:
            idle = True
            sp = self._idle_sp
            if not now:
                now = time.monotonic()
        if deadline is not None and deadline - now < budget:
            budget = max(0.0, deadline - now)
            ticks = self._rt.ticks_for(budget)
        if self._takes_jobs:
            open_chain = open_chain | {self.guid}
        own = (*chain, self.guid) if chain else self._own_chain
        frame = Frame(method, own, budget, deadline, open_chain)
        frame.seg_start = now
        frames.append(frame)
        try:
            status = inst.invoke(method.encode(), args, idle, ticks)
        except WasmFault as fault:
            self._unwind_stack(sp)
            raise self._translate(fault, method) from fault
        finally:
            frames.pop()
            if frames:
                self._resume()
        # A reply in the inbox's slot is the call's last one (atoms/ABI.md "The inbox").
        in_slot = inst.reply
        if not status and type(in_slot) is bytes and frame.bad_slot is None:
            return in_slot  # how a call of an atom with an inbox ends
        return self._reply_of(frame, status, in_slot, method)

    def _reply_of(
        self, frame: Frame, status: int, in_slot: bytes | int | None, method: str
    ) -> bytes:
        """The result of an entry that returned ``status`` and left ``in_slot`` in the
        inbox's slot (see WasmInstance.invoke), when it is not simply the slot's bytes."""
        if frame.bad_slot is not None:
            bad = WasmFault(frame.bad_slot, interrupted=False, cause=None)
            raise self._translate(bad, method)
        if in_slot is None:
            reply, too_large = frame.reply, frame.too_large
            frame.reply = None  # the idle frame keeps no reply until the next call
        elif isinstance(in_slot, bytes):
            reply, too_large = in_slot, 0
        else:
            reply, too_large = None, in_slot
        if too_large:
            raise PayloadTooLargeError(
                f"atom {self.guid}: result of {method} is {too_large} bytes, over the "
                f"{self._rt.max_payload_bytes}-byte limit"
            )
        if status != 0:
            text = reply.decode("utf-8", errors="replace") if reply else f"status {status}"
            raise MethodError(f"atom {self.guid}: {method} failed: {text}")
        return reply if reply is not None else _MSGPACK_NIL

    def _take_reply(self, frame: Frame) -> None:
        """After an entry returned: the reply it left in the inbox's slot, if any,
        is its last one (atoms/ABI.md "The inbox")."""
        try:
            reply = self._inst.take_reply()
        except BadPointerError as exc:
            raise WasmFault(
                f"its reply slot is bad: {exc}", interrupted=False, cause=None
            ) from None
        if reply is None:
            return
        if isinstance(reply, int):
            frame.too_large = reply
        else:
            frame.reply = reply
            frame.too_large = 0

    def _keep_reply(self) -> None:
        """Before entering the atom inside a running entry: what that entry put in
        the reply slot so far is its reply, copied out before the nested entry
        reuses the slot."""
        if self._frames:
            frame = self._frames[-1]
            try:
                self._take_reply(frame)
            except WasmFault as fault:
                # That entry's fault, not the nested one's: it fails when it returns.
                frame.bad_slot = fault.message

    def _nested_deadline(self, deadline: float | None) -> float | None:
        """An activation inside another (at its blocking point) ends by the outer one's deadline."""
        if self._frames:
            outer = self._frames[-1].deadline
            if outer is not None and (deadline is None or outer < deadline):
                return outer
        return deadline

    def _wait_deadline(self) -> float | None:
        """When the running activation's waits must end (None: hx_main's own waits)."""
        return self._frames[-1].deadline if self._frames else None

    def _deadline_error(self, what: str) -> DeadlineExceededError:
        method = self._frames[-1].method if self._frames else "?"
        return DeadlineExceededError(
            f"atom {self.guid}: {method} was still waiting in {what} at its call's deadline"
        )

    def _check_going_on(self, what: str) -> None:
        """Before a syscall that acts outside the atom: its call may not go on when the
        atom was dropped meanwhile (its node fenced, or it moved: another copy now
        serves) or the call is past its deadline. Raising here unwinds the call."""
        if self._closed:
            method = self._frames[-1].method if self._frames else "?"
            raise UnreachableError(
                f"atom {self.guid} was dropped by node {self.node_name}; "
                f"its running call {method} ends at {what}"
            )
        end = self._wait_deadline()
        if end is not None and time.monotonic() >= end:
            method = self._frames[-1].method if self._frames else "?"
            raise DeadlineExceededError(
                f"atom {self.guid}: {method} was still running at {what} at its call's deadline"
            )

    def _translate(self, fault: WasmFault, what: str) -> HermesError:
        cause = fault.cause
        while isinstance(cause, WasmFault):  # raised in a syscall that called hx_alloc
            cause = cause.cause
        if isinstance(cause, HermesError):
            return cause
        limit = self._rt.memory_limit_bytes
        if isinstance(cause, BadAllocError):
            return AtomTrapError(
                f"atom {self.guid}: {what}: the atom's {fault.message} (a bug in the atom, "
                "not a memory-cap hit)"
            )
        if fault.interrupted:
            return DeadlineExceededError(
                f"atom {self.guid}: {what} ran past its {self._rt.deadline_ms} ms CPU deadline"
            )
        # memory.grow fails silently (-1) at the cap and the atom then traps or
        # its hx_alloc fails; wasmtime-py does not report the refused grow. A
        # trap with the memory within an eighth of the cap is taken as that case.
        if isinstance(cause, MemoryError) or self._inst.memory_size + max(PAGE, limit // 8) > limit:
            return MemoryLimitError(
                f"atom {self.guid}: {what} hit the memory cap of {limit} bytes "
                f"({self._usage_text()}; {fault.message})"
            )
        return AtomTrapError(f"atom {self.guid}: {what} trapped: {fault.message}")

    def _run_init(self, init_args: bytes) -> None:
        inst = self._inst
        deadline = time.monotonic() + self._rt.default_timeout_s
        frame = Frame("hx_init", (self.guid,), self._budget_s, deadline)
        sp = self._entry_sp()
        self._frames.append(frame)
        frame.seg_start = time.monotonic()
        inst.set_deadline(self._budget_ticks)
        self._running = True
        try:
            ptr = inst.alloc_write(init_args) if init_args else 0
            status = inst.call("hx_init", (ptr, len(init_args)), True)
            self._take_reply(frame)
        except WasmFault as fault:
            self._unwind_stack(sp)
            raise self._translate(fault, "hx_init") from fault
        finally:
            self._frames.pop()
            self._running = False
        if status != 0:
            text = frame.reply.decode("utf-8", errors="replace") if frame.reply else ""
            raise MethodError(f"atom {self.guid}: hx_init failed (status {status}): {text}")

    def _run_handler(self, item: Interrupt | FutureDone) -> None:
        inst = self._inst
        if isinstance(item, Interrupt):
            export, label = "hx_interrupt", f"interrupt {item.code}"
        else:
            export, label = "hx_future", f"future {item.future_id}"
        if not inst.has(export):
            logger.warning("atom %s has no %s: %s dropped", self.guid, export, label)
            return
        # A handler run at a call's blocking point ends by that call's deadline.
        deadline = self._nested_deadline(None)
        if deadline is None:
            deadline = time.monotonic() + self._rt.default_timeout_s
        frame = Frame(label, (self.guid,), self._budget_s, deadline)
        self._keep_reply()
        sp = self._entry_sp()
        self._frames.append(frame)
        frame.seg_start = time.monotonic()
        inst.set_deadline(self._budget_ticks)
        try:
            ptr = inst.alloc_write(item.payload)
            if isinstance(item, Interrupt):
                inst.call(export, (item.code, ptr, len(item.payload)), False)
            else:
                inst.call(export, (item.future_id, item.status, ptr, len(item.payload)), False)
        except WasmFault as fault:
            self._unwind_stack(sp)
            error = self._translate(fault, label)
            logger.warning("atom %s: handler failed: %s", self.guid, error)
        finally:
            inst.clear_reply()  # a handler's reply goes nowhere
            self._frames.pop()
            self._generation += 1
            if self._frames:
                self._resume()

    def _read_sp(self) -> int:
        if self._sp is None:
            return 0
        value = self._sp.value(self._store)
        return int(value) if isinstance(value, int) else 0

    def _entry_sp(self) -> int:
        """Stack pointer an entry starts with (cheap for an entry from idle)."""
        return self._read_sp() if self._frames else self._idle_sp

    def _unwind_stack(self, sp: int) -> None:
        if self._sp is not None:
            self._sp.set_value(self._store, sp)

    def _pause(self) -> None:
        if self._frames:
            frame = self._frames[-1]
            frame.used += time.monotonic() - frame.seg_start

    def _resume(self) -> None:
        frame = self._frames[-1]
        if frame.per_segment:
            frame.used = 0.0
            frame.log_bytes = frame.log_lines = 0
            frame.log_cut = False
        frame.seg_start = time.monotonic()
        remaining = max(0.0, frame.budget - frame.used)
        self._inst.set_deadline(self._rt.ticks_for(remaining))

    @contextlib.contextmanager
    def _blocked(self) -> Iterator[None]:
        """The atom waits outside its own code: its CPU deadline stands still."""
        self._pause()
        try:
            yield
        finally:
            if self._frames:
                self._resume()
