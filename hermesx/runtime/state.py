"""Snapshot and restore of one atom instance (docs/DESIGN.md §3, §5).

A snapshot holds everything that makes the atom continue exactly elsewhere:
its linear memory, its mutable globals, its KV, its reply table, and the
interrupts and future results waiting in its mailbox. The byte format is
hermesx.core.snapshot's; this module reads the state out of a live instance
and writes it into a fresh one.
"""

from __future__ import annotations

import ctypes
from dataclasses import replace

import wasmtime

from hermesx.core.errors import AtomTrapError, MemoryLimitError, StorageError
from hermesx.core.replies import ReplyWindow
from hermesx.core.snapshot import AtomState, ReplyRecord, memory_segments, new_reply_record
from hermesx.runtime.activation import AtomActivations
from hermesx.runtime.mailbox import FutureDone, Interrupt
from hermesx.runtime.memory import KV_ENTRY_OVERHEAD
from hermesx.runtime.modules import PAGE

__all__ = ["AtomSnapshots"]


class AtomSnapshots(AtomActivations):
    """Reading an atom's whole state out of its instance, and writing it back into a new one."""

    def _capture_state(self) -> AtomState:
        inst = self._inst
        size = inst.memory_size
        # Read in place: memory_segments copies it piece by piece (see hermesx.core.snapshot).
        memory = memoryview((ctypes.c_char * size).from_address(inst.base)) if size else b""
        # The mailbox and the reply table in one hold of the lock a message's delivery
        # holds: its id is recorded with it queued (AtomScheduling.deliver), both or neither.
        with self._cv:
            rest = self._capture_rest()
            records = self.replies.records()
        if self._under_way:
            records += self._cut_records()
        return replace(rest, memory=memory_segments(memory), kv=dict(self.kv), replies=records)

    def _cut_records(self) -> tuple[ReplyRecord, ...]:
        """Outcomes for the calls this snapshot catches mid-run (a reentrant or daemon
        atom's snapshot at a blocking point): it holds what each did up to there, so a
        copy restored from it must not run one again (docs/DESIGN.md §4 "Exactly once").
        In the snapshot only: the live atom records each call's own outcome when it ends,
        and its next checkpoint holds that."""
        return tuple(
            new_reply_record(
                request_id,
                AtomTrapError.kind,
                f"atom {self.guid}: request id {request_id} was cut mid-run: this copy of "
                "the atom was restored from a checkpoint taken while the call waited, which "
                "holds what it had done up to there; not run again".encode(),
                0,
                b"",
            )
            for request_id in sorted(self._under_way)
        )

    def _capture_rest(self) -> AtomState:
        """The state but its memory, KV and reply records; called holding ``_cv``."""
        inst = self._inst
        globals_ = tuple((name, kind, g.value(self._store)) for name, kind, g in self._globals)
        interrupts = tuple((m.code, m.payload) for m in self._mail if isinstance(m, Interrupt))
        futures = tuple(
            (m.future_id, m.status, m.payload) for m in self._mail if isinstance(m, FutureDone)
        )
        next_future = self._next_future
        return AtomState(
            module_hash=self.module.hash,
            guid=self.guid,
            memory_size=inst.memory_size,
            memory=(),
            globals=globals_,
            reply_window=(self.replies.window.entries, self.replies.window.seconds),
            reply_floors=self.replies.floors(),
            replies_forgotten_before_ms=self.replies.forgotten_before_ms,
            interrupts=interrupts,
            futures=futures,
            next_future_id=next_future,
            generation=self._generation,
        )

    def _apply_state(self, state: AtomState) -> None:
        inst = self._inst
        memory = inst.memory
        current = inst.memory_size
        # Data segments were written at instantiation; the snapshot replaces them.
        ctypes.memset(inst.base, 0, current)
        if state.memory_size > current:
            try:
                memory.grow(self._store, (state.memory_size - current) // PAGE)
            except wasmtime.WasmtimeError as exc:
                raise MemoryLimitError(
                    f"atom {self.guid}: snapshot memory of {state.memory_size} bytes exceeds "
                    f"the cap of {self._rt.memory_limit_bytes} bytes"
                ) from exc
            current = inst.refresh_memory()
        for offset, data in state.memory:
            if offset + len(data) > current:
                raise StorageError(f"snapshot of atom {self.guid} is damaged: memory out of range")
            ctypes.memmove(inst.base + offset, data, len(data))
        saved = {name: value for name, _kind, value in state.globals}
        for name, _kind, g in self._globals:
            if name not in saved:
                raise StorageError(f"snapshot of atom {self.guid} lacks global {name}")
            g.set_value(self._store, saved[name])
        # A daemon's snapshot is taken inside hx_main, which restarts from
        # scratch: give it a fresh stack (for other atoms this is a no-op).
        self._unwind_stack(self._initial_sp)
        # A snapshot taken at a blocking point may hold that call's reply: not ours.
        inst.clear_reply()
        self.kv = dict(state.kv)
        self._kv_bytes = sum(len(k) + len(v) + KV_ENTRY_OVERHEAD for k, v in self.kv.items())
        self.replies.restore(
            ReplyWindow(*state.reply_window),
            state.replies,
            state.reply_floors,
            state.replies_forgotten_before_ms,
        )
        self._limit_memory()
        for code, payload in state.interrupts:
            self._mail.append(Interrupt(code, payload))
        for future_id, status, payload in state.futures:
            self._mail.append(FutureDone(future_id, status, payload))
        self._next_future = state.next_future_id
        self._generation = state.generation
