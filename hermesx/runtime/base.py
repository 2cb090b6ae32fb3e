"""The fields every part of an atom shares (docs/DESIGN.md §3).

An :class:`~hermesx.runtime.atom.Atom` is built from one class per role, each
in its own module and each using the ones below it: the memory cap
(hermesx.runtime.memory), running its code (hermesx.runtime.activation),
snapshots of its state (hermesx.runtime.state), turns and the mailbox
(hermesx.runtime.scheduling), the syscalls (hermesx.runtime.syscalls), what
changed since the last checkpoint (hermesx.runtime.delta), and the atom's
public face and lifecycle (hermesx.runtime.atom). :class:`AtomBase`
declares the state they share; ``Atom.__init__`` sets all of it. One class, not
objects per role: the invoke path pays no extra hop between them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import wasmtime

from hermesx.core.replies import ReplyTable
from hermesx.runtime.host import AtomHost
from hermesx.runtime.instance import WasmInstance
from hermesx.runtime.modules import LoadedModule

if TYPE_CHECKING:
    from hermesx.runtime.activation import Frame
    from hermesx.runtime.engine import Runtime
    from hermesx.runtime.mailbox import Mail

__all__ = ["AtomBase"]


class AtomBase:
    """The state of one atom; the roles built on it are listed in the module docstring."""

    guid: str
    module: LoadedModule
    reentrant: bool
    kv: dict[bytes, bytes]
    replies: ReplyTable
    _rt: Runtime
    _host: AtomHost
    # Guards the fields of turns, the mailbox and outgoing invokes; _cv waits
    # on it. The hot path takes the lock itself: a Condition's ``with`` costs
    # two more Python calls.
    _lock: threading.Lock
    _cv: threading.Condition
    _running: bool
    # Callers queued for the atom: Turn (plain callers) or Job (run at a blocking point).
    _waiters: deque[object]
    _mail: deque[Mail]
    _closed: bool
    # Bytes the KV counts toward the memory cap (see KV_ENTRY_OVERHEAD).
    _kv_bytes: int
    # The memory size limit last given to the store.
    _memory_allowance: int
    _memory_cap: int
    _generation: int
    # Activations running, innermost last.
    _frames: list[Frame]
    # Request ids of the calls running, of atoms that take jobs: a retry of one that
    # arrives while it waits at a blocking point is refused, not run twice.
    _under_way: set[str]
    _next_future: int
    _sync_results: dict[int, tuple[int, bytes]]
    # Blocking invokes under way: future id -> target (name or GUID), for
    # the wait-for check of callers queued behind this atom.
    _outgoing: dict[int, str]
    # Blocking invokes given up at their deadline: their late results are dropped.
    _abandoned: set[int]
    # Outgoing invokes on the syscall pool, and those waiting for a slot there.
    _outgoing_running: int
    _outgoing_queue: deque[Callable[[], None]]
    _idle_scheduled: bool
    _daemon: threading.Thread | None
    _budget_s: float
    _budget_ticks: int
    # The runtime's limits, read on every call.
    _max_payload: int
    _default_timeout_s: float
    # Reentrant and daemon atoms run calls that arrive while they are busy as
    # jobs at their blocking points.
    _takes_jobs: bool
    # The Frame of Atom.invoke's entry from idle (no other entry under way),
    # set afresh at each: making one costs more than filling it in again.
    _idle_frame: Frame
    # (guid,): the chain of a call that came with none.
    _own_chain: tuple[str, ...]
    _store: wasmtime.Store
    _inst: WasmInstance
    # The host functions' callbacks, alive as long as the store.
    _keep: list[Any]
    _globals: list[tuple[str, str, wasmtime.Global]]
    # ABI.md: after a trap the runtime puts the C stack pointer back where
    # the trapped entry found it, or every trap would leak stack frames.
    _sp: wasmtime.Global | None
    _initial_sp: int
    # The stack pointer whenever no entry of the atom runs.
    _idle_sp: int

    @property
    def node_name(self) -> str:
        return self._host.node_name
