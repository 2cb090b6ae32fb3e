"""The atom runtime: load, run, guard, snapshot and restore atoms (DESIGN.md §3).

A :class:`Runtime` owns one wasmtime engine, its epoch ticker (CPU deadlines),
a pool that runs the atoms' outgoing syscalls (``invoke``, ``invoke_async``) and
a small pool that delivers interrupts to idle reactive atoms. An :class:`Atom`
is one instance of a :class:`LoadedModule` with its own store, KV, reply table
and mailbox.

Execution model (Radon's cooperative model): one thread runs an atom at a
time. Calls to a busy atom queue FIFO. A blocking syscall (``invoke``,
``recv``, ``yield``) pumps the atom's mailbox, so interrupt and future handlers
(and, for reentrant and daemon atoms, incoming invocations) run re-entrantly on
the blocked thread at that point and at no other. The CPU deadline of a call
counts only the time its own code runs: it is paused while the atom waits in a
syscall.

Deadlines are absolute (DESIGN.md §4): besides its CPU budget every activation
has a wall-clock deadline, the caller's (or ``default_timeout_s`` when the
caller gave none); a nested activation never outlives the one it runs inside.
Every wait of the atom (``recv``, ``invoke``, ``yield``, its queue, a snapshot's
wait for a turn) ends there with a clear error, and a blocked syscall abandoned
at its deadline unwinds the atom's wasm stack like a trap. Only ``hx_main``'s
own ``recv`` waits without a deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import hashlib
import importlib.metadata
import logging
import math
import os
import pathlib
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import wasmtime
from wasmtime import _bindings as ffi

from hermesx.core.errors import (
    AtomTrapError,
    BadModuleError,
    CallCycleError,
    CapacityError,
    ConfigurationError,
    DeadlineExceededError,
    HermesError,
    MemoryLimitError,
    MethodError,
    PayloadTooLargeError,
    StorageError,
    UnreachableError,
    error_from_wire,
)
from hermesx.core.files import private_dir
from hermesx.core.identity import GUID
from hermesx.core.replies import ReplyTable, ReplyWindow
from hermesx.core.snapshot import (
    AtomState,
    ReplyRecord,
    decode_state,
    encode_state,
    memory_segments,
)
from hermesx.runtime import abi
from hermesx.runtime.host import AtomHost, CallContext, StandaloneHost
from hermesx.runtime.rewrite import check_module_limits, export_mutable_globals

__all__ = ["Atom", "LoadedModule", "Runtime", "run_once"]

logger = logging.getLogger(__name__)

_MSGPACK_NIL = b"\xc0"
_STACK_POINTER = "__stack_pointer"
_PAGE = 65536
# Tables are not counted in the memory cap: without a bound of their own, one
# `(table 100000000 funcref)` costs the node ~1 GiB per instance. C atoms use
# a table only for function pointers, a few hundred entries at most.
MAX_TABLE_ELEMENTS = 1 << 16
_set_epoch_deadline = ffi.wasmtime_context_set_epoch_deadline
# Serialized modules only load into an engine with the same version and config.
_CACHE_TAG = f"wasmtime{importlib.metadata.version('wasmtime')}-hx2"
# Host-side state counts toward the atom's memory cap (DESIGN.md §3): KV entries
# by their key and value bytes plus this much for the entry itself, reply-table
# entries by their payload plus this much.
KV_ENTRY_OVERHEAD = 64
REPLY_ENTRY_OVERHEAD = 128
# Messages waiting in an atom's mailbox (sends to it), at most.
MAX_MAIL_ITEMS = 4096
MAX_MAIL_BYTES = 16 * 2**20
# Log output of one call (or handler run, or a daemon's stretch between two
# blocking points): more is dropped after one line that says so.
MAX_LOG_BYTES_PER_CALL = 64 * 1024
MAX_LOG_LINES_PER_CALL = 1000
# Address space per atom: a linear memory reserves exactly the memory cap
# (rounded to whole pages) plus this guard, instead of wasmtime's default
# 4 GiB + 32 MiB, so one process holds 100,000 atoms. Memory accesses are then
# bounds-checked in code: a call costs the same, wasm code that mostly writes
# memory runs ~1.4x slower (`fill_1mib_ms` of `hermesx bench runtime`). The
# memory can never grow past the cap.
MEMORY_GUARD_BYTES = 64 * 1024
# Each atom's memory costs the process two memory mappings (its accessible
# pages and the reserved rest); vm.max_map_count bounds the mappings of a
# process. Mappings kept free for everything else (threads, modules, LMDB, gRPC).
MAPS_PER_ATOM = 2
MAPS_HEADROOM = 8192
_MAX_MAP_COUNT = pathlib.Path("/proc/sys/vm/max_map_count")
_USER_ADDRESS_SPACE = 2**47  # x86-64 and aarch64 with 4-level page tables


def _read_int(path: pathlib.Path, default: int) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _maps_in_use() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def atom_capacity(memory_limit_bytes: int) -> tuple[int, str]:
    """How many atoms this process can hold, and the limit that decides it.

    The kernel refuses new mappings past ``vm.max_map_count``; the address
    space bounds the reservations.
    """
    max_maps = _read_int(_MAX_MAP_COUNT, 65530)
    by_maps = max(0, max_maps - _maps_in_use() - MAPS_HEADROOM) // MAPS_PER_ATOM
    reservation = _memory_reservation(memory_limit_bytes) + MEMORY_GUARD_BYTES
    by_space = _USER_ADDRESS_SPACE // 2 // reservation
    if by_maps <= by_space:
        return max(1, by_maps), (
            f"set by vm.max_map_count = {max_maps} at {MAPS_PER_ATOM} memory mappings per atom; "
            "raise it to host more"
        )
    return max(1, by_space), f"set by the address space at {reservation} bytes per atom"


def _memory_reservation(memory_limit_bytes: int) -> int:
    return -(-memory_limit_bytes // _PAGE) * _PAGE


@dataclass(frozen=True, slots=True, eq=False)
class LoadedModule:
    """A validated, rewritten and compiled atom module."""

    hash: str  # hex sha256 of the ORIGINAL module bytes
    wasm: bytes  # the original bytes
    compiled: wasmtime.Module
    imports: tuple[str, ...]  # hx import names, in the module's import order
    optional_exports: frozenset[str]
    # (export name, value type) of every mutable global, in index order.
    mutable_globals: tuple[tuple[str, str], ...]

    @property
    def is_daemon(self) -> bool:
        return "hx_main" in self.optional_exports

    @property
    def has_init(self) -> bool:
        return "hx_init" in self.optional_exports

    @property
    def has_interrupt(self) -> bool:
        return "hx_interrupt" in self.optional_exports

    @property
    def has_future(self) -> bool:
        return "hx_future" in self.optional_exports


class _NoSyscalls:
    """Syscalls while validating a module: a start function gets none."""

    guid = "validation"
    node_name = "validation"
    kv: dict[bytes, bytes] = {}

    def __getattr__(self, name: str) -> Any:
        def refuse(*_args: Any) -> Any:
            raise BadModuleError(f"the start function calls a syscall ({name}) while loading")

        return refuse


class Runtime:
    """One wasmtime engine plus the threads that serve its atoms."""

    def __init__(
        self,
        *,
        node_name: str = "local",
        cache_dir: pathlib.Path | None = None,
        deadline_ms: int = 5000,
        memory_limit_bytes: int = 64 * 2**20,
        max_payload_bytes: int = 4 * 2**20,
        reply_table_size: int = 1024,
        default_timeout_s: float = 30.0,
        max_atoms: int | None = None,
    ) -> None:
        if deadline_ms <= 0:
            raise ConfigurationError(f"deadline_ms must be positive, not {deadline_ms}")
        if memory_limit_bytes < _PAGE:
            raise ConfigurationError(f"memory_limit_bytes must be at least {_PAGE}")
        self.node_name = node_name
        self.cache_dir = cache_dir
        self.deadline_ms = deadline_ms
        self.memory_limit_bytes = memory_limit_bytes
        self.max_payload_bytes = max_payload_bytes
        self.reply_table_size = reply_table_size
        if not default_timeout_s > 0 or math.isinf(default_timeout_s):
            raise ConfigurationError(
                f"default_timeout_s must be a positive number of seconds, not {default_timeout_s}"
            )
        # The wall-clock deadline of a call whose caller gave none, and of
        # interrupt and future handlers run while the atom is idle.
        self.default_timeout_s = default_timeout_s
        if max_atoms is not None and max_atoms < 1:
            raise ConfigurationError(f"max_atoms must be at least 1, not {max_atoms}")
        if max_atoms is None:
            self.max_atoms, self.capacity_reason = atom_capacity(memory_limit_bytes)
        else:
            self.max_atoms, self.capacity_reason = max_atoms, "as configured"

        config = wasmtime.Config()
        config.epoch_interruption = True
        # The runtime caches each memory's base address between calls.
        config.memory_may_move = False
        config.memory_reservation = _memory_reservation(memory_limit_bytes)
        config.memory_guard_size = MEMORY_GUARD_BYTES
        config.memory_reservation_for_growth = 0
        # A copy-on-write image of the data segments costs each atom two more
        # mappings (see MAPS_PER_ATOM); atoms' data segments are small.
        config.memory_init_cow = False
        self.engine = wasmtime.Engine(config)

        # A tick of 1-10 ms keeps deadline granularity under ~5% of the deadline
        # without waking the ticker more than needed.
        self.tick_s = min(0.010, max(0.001, deadline_ms / 1000 / 50))
        self._stop = threading.Event()
        self._ticker = threading.Thread(
            target=self._tick, name=f"hx-epoch-{node_name}", daemon=True
        )
        self._ticker.start()
        self._modules: dict[str, LoadedModule] = {}
        self._modules_lock = threading.Lock()
        self.syscall_pool = ThreadPoolExecutor(32, thread_name_prefix=f"hx-syscall-{node_name}")
        self.idle_pool = ThreadPoolExecutor(2, thread_name_prefix=f"hx-idle-{node_name}")
        self._atoms: weakref.WeakSet[Atom] = weakref.WeakSet()
        self._closed = False

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.engine.increment_epoch()

    def ticks_for(self, seconds: float) -> int:
        """Epoch ticks that cover ``seconds`` of CPU time (at least one full tick)."""
        return max(1, math.ceil(seconds / self.tick_s)) + 1

    # -- modules ------------------------------------------------------------

    def load(self, wasm: bytes) -> LoadedModule:
        """Validate, rewrite and compile ``wasm``; cached by content hash."""
        digest = hashlib.sha256(wasm).hexdigest()
        with self._modules_lock:
            cached = self._modules.get(digest)
        if cached is not None:
            return cached
        label = f"module {digest[:12]} ({len(wasm)} bytes)"
        try:
            # Counts first: compiling and instantiating cost grows with them.
            check_module_limits(wasm)
            rewritten = export_mutable_globals(wasm)
            compiled = self._compile(digest, rewritten.wasm)
            imports, optional = abi.validate_module_types(compiled)
        except BadModuleError as exc:
            # The checks above describe the defect; the user needs to know which module.
            if str(exc).startswith(f"module {digest[:12]}"):
                raise
            raise BadModuleError(f"{label}: {exc}") from exc
        export_types = {exp.name: exp.type for exp in compiled.exports}
        globals_: list[tuple[str, str]] = []
        for name in rewritten.mutable_globals:
            gtype = export_types.get(name)
            kind = str(gtype.content) if isinstance(gtype, wasmtime.GlobalType) else "?"
            if kind not in ("i32", "i64", "f32", "f64"):
                raise BadModuleError(
                    f"module {digest[:12]} has a mutable global {name!r} of type {kind}, "
                    "which snapshots cannot hold"
                )
            globals_.append((name, kind))
        module = LoadedModule(digest, bytes(wasm), compiled, imports, optional, tuple(globals_))
        self._check_abi_version(module)
        with self._modules_lock:
            return self._modules.setdefault(digest, module)

    def _compile(self, digest: str, wasm: bytes) -> wasmtime.Module:
        path = self.cache_dir / f"{digest}.{_CACHE_TAG}.cwasm" if self.cache_dir else None
        if path is not None and path.exists():
            try:
                return wasmtime.Module.deserialize_file(self.engine, str(path))
            except wasmtime.WasmtimeError as exc:
                logger.warning("module cache %s unusable, compiling again: %s", path, exc)
        try:
            compiled = wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
            raise BadModuleError(f"module {digest[:12]} is not valid WebAssembly: {first}") from exc
        if path is not None:
            self._store_compiled(path, compiled)
        return compiled

    @staticmethod
    def _store_compiled(path: pathlib.Path, compiled: wasmtime.Module) -> None:
        try:
            private_dir(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(compiled.serialize())
            os.replace(tmp, path)
        except OSError as exc:
            # The cache only saves compile time; running without it is fine.
            logger.warning("cannot write module cache %s: %s", path, exc)

    def _check_abi_version(self, module: LoadedModule) -> None:
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=self.memory_limit_bytes, table_elements=MAX_TABLE_ELEMENTS)
        inst = abi.WasmInstance(store, self.max_payload_bytes)
        funcs, _keep = abi.make_imports(inst, module.imports, cast(abi.Syscalls, _NoSyscalls()))
        store.set_epoch_deadline(self.ticks_for(self.deadline_ms / 1000))
        label = f"module {module.hash[:12]}"
        instance = _instantiate(store, module, funcs, label, self)
        inst.bind(instance)
        try:
            version = inst.call("hx_abi_version", (), True)
        except abi.WasmFault as fault:
            raise BadModuleError(f"{label}: hx_abi_version trapped: {fault.message}") from fault
        if version != abi.ABI_VERSION:
            raise BadModuleError(
                f"{label} implements ABI version {version}; this runtime speaks {abi.ABI_VERSION}"
            )

    # -- atoms --------------------------------------------------------------

    def create(
        self,
        module: LoadedModule,
        guid: str,
        host: AtomHost,
        init_args: bytes = b"",
        *,
        reentrant: bool = False,
    ) -> Atom:
        """Instantiate ``module`` as atom ``guid`` and run its ``hx_init``."""
        self._check_open()
        if len(init_args) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"atom {guid}: init arguments of {len(init_args)} bytes exceed "
                f"the {self.max_payload_bytes}-byte limit"
            )
        self._check_capacity(guid)
        atom = Atom(self, module, guid, host, reentrant)
        if module.has_init:
            atom._run_init(init_args)
        self._start(atom)
        return atom

    def restore(
        self,
        module: LoadedModule,
        guid: str,
        host: AtomHost,
        snapshot: bytes,
        *,
        reentrant: bool = False,
    ) -> Atom:
        """Rebuild atom ``guid`` from a snapshot taken by :meth:`Atom.snapshot`."""
        self._check_open()
        state = decode_state(snapshot)
        if state.module_hash != module.hash:
            raise StorageError(
                f"snapshot of atom {guid} belongs to module {state.module_hash[:12]}, "
                f"not {module.hash[:12]}"
            )
        if state.guid != guid:
            raise StorageError(f"snapshot belongs to atom {state.guid}, not {guid}")
        self._check_capacity(guid)
        atom = Atom(self, module, guid, host, reentrant)
        atom._apply_state(state)
        self._start(atom)
        return atom

    def _start(self, atom: Atom) -> None:
        self._atoms.add(atom)
        if atom.module.is_daemon:
            atom._start_daemon()
        elif atom._has_mail():
            atom._schedule_idle()

    @property
    def atom_count(self) -> int:
        """Atoms whose memory this process still holds (closed ones until collected)."""
        return len(self._atoms)

    def _check_capacity(self, guid: str) -> None:
        if len(self._atoms) < self.max_atoms:
            return
        # Closed atoms keep their memory until their store is collected.
        gc.collect()
        if len(self._atoms) >= self.max_atoms:
            raise CapacityError(
                f"node {self.node_name} is full: it holds {len(self._atoms)} atoms, its capacity "
                f"({self.capacity_reason}); atom {guid} was not started here"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError(f"runtime of node {self.node_name} is closed")

    def close(self) -> None:
        """Close every atom (stopping daemons), then the ticker and the pools."""
        if self._closed:
            return
        self._closed = True
        for atom in list(self._atoms):
            atom.close()
        self._stop.set()
        self._ticker.join(timeout=5)
        self.syscall_pool.shutdown(wait=False, cancel_futures=True)
        self.idle_pool.shutdown(wait=False, cancel_futures=True)


def _instantiate(
    store: wasmtime.Store,
    module: LoadedModule,
    funcs: list[wasmtime.Func],
    label: str,
    runtime: Runtime,
) -> wasmtime.Instance:
    try:
        return wasmtime.Instance(store, module.compiled, funcs)
    except wasmtime.Trap as exc:
        if exc.trap_code == wasmtime.TrapCode.INTERRUPT:
            raise BadModuleError(
                f"{label}: the start function ran past the {runtime.deadline_ms} ms deadline"
            ) from exc
        # wasmtime puts a backtrace first and the reason ("wasm trap: ...") last.
        lines = [line.strip() for line in exc.message.splitlines() if line.strip()]
        reason = lines[-1] if lines else "trap"
        raise BadModuleError(f"{label}: the start function trapped: {reason}") from exc
    except wasmtime.WasmtimeError as exc:
        text = str(exc)
        if "Cannot allocate memory" in text or "os error 12" in text:
            raise CapacityError(
                f"{label}: node {runtime.node_name} cannot reserve memory for another atom "
                f"(it holds {runtime.atom_count}; raise vm.max_map_count or host fewer atoms "
                f"per node): {text.splitlines()[0]}"
            ) from exc
        if "memory" in text and ("limit" in text or "minimum" in text or "grow" in text):
            raise MemoryLimitError(
                f"{label} needs more memory than the cap of {runtime.memory_limit_bytes} bytes"
            ) from exc
        raise BadModuleError(f"{label} cannot be instantiated: {text.splitlines()[0]}") from exc


class _Frame:
    """One activation of the atom's code: a call, a handler or ``hx_main``."""

    __slots__ = (
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
        # hx_main's budget renews at each blocking point.
        self.per_segment = False
        self.log_bytes = 0
        self.log_lines = 0
        self.log_cut = False


@dataclass(frozen=True, slots=True)
class _Interrupt:
    code: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class _FutureDone:
    future_id: int
    status: int
    payload: bytes


_PENDING, _TAKEN, _DONE = 0, 1, 2
# How often a caller queued behind a busy atom looks again for a wait cycle.
CYCLE_RECHECK_S = 0.2
# Outgoing invokes one atom may have on the node's syscall pool at once.
MAX_OUTGOING_PER_ATOM = 8


class _Turn:
    """A plain caller's place in an atom's FIFO queue."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


class _Job:
    """Work handed to the atom's own thread at a blocking point.

    Used for invocations of reentrant and daemon atoms while they are busy,
    and for snapshots of daemon atoms (their thread never leaves ``hx_main``).
    """

    __slots__ = (
        "args",
        "chain",
        "deadline",
        "error",
        "generation",
        "method",
        "open_chain",
        "request_id",
        "result",
        "snapshot",
        "state",
    )

    def __init__(
        self,
        method: str,
        args: bytes,
        request_id: str,
        chain: tuple[str, ...],
        deadline: float | None,
        snapshot: bool = False,
        open_chain: frozenset[str] = frozenset(),
    ) -> None:
        self.method = method
        self.args = args
        self.request_id = request_id
        self.chain = chain
        self.deadline = deadline
        self.open_chain = open_chain
        self.snapshot = snapshot
        self.state = _PENDING
        self.result: bytes = b""
        self.generation = 0
        self.error: HermesError | None = None


_Mail = _Interrupt | _FutureDone | _Job


class Atom:
    """A running atom. Thread-safe; see the module docstring for the model."""

    def __init__(
        self, runtime: Runtime, module: LoadedModule, guid: str, host: AtomHost, reentrant: bool
    ) -> None:
        self.guid = guid
        self.module = module
        self.reentrant = reentrant
        self.kv: dict[bytes, bytes] = {}
        self._rt = runtime
        self._host = host
        self._cv = threading.Condition(threading.Lock())
        self._running = False
        self._waiters: deque[object] = deque()
        self._mail: deque[_Mail] = deque()
        self._closed = False
        self.replies = ReplyTable(ReplyWindow(runtime.reply_table_size))
        # Bytes the KV counts toward the memory cap (see KV_ENTRY_OVERHEAD).
        self._kv_bytes = 0
        # The memory size limit last given to the store.
        self._memory_allowance = -1
        self._generation = 0
        self._frames: list[_Frame] = []
        self._next_future = 1
        self._sync_results: dict[int, tuple[int, bytes]] = {}
        # Blocking invokes under way: future id -> target (name or GUID), for
        # the wait-for check of callers queued behind this atom.
        self._outgoing: dict[int, str] = {}
        # Blocking invokes given up at their deadline: their late results are dropped.
        self._abandoned: set[int] = set()
        # Outgoing invokes on the syscall pool, and those waiting for a slot there.
        self._outgoing_running = 0
        self._outgoing_queue: deque[Callable[[], None]] = deque()
        self._idle_scheduled = False
        self._daemon: threading.Thread | None = None
        self._budget_s = runtime.deadline_ms / 1000
        self._budget_ticks = runtime.ticks_for(self._budget_s)

        store = wasmtime.Store(runtime.engine)
        store.set_limits(memory_size=runtime.memory_limit_bytes, table_elements=MAX_TABLE_ELEMENTS)
        self._store = store
        self._inst = abi.WasmInstance(store, runtime.max_payload_bytes)
        funcs, self._keep = abi.make_imports(self._inst, module.imports, self)
        _set_epoch_deadline(self._inst.ctx, runtime.ticks_for(self._budget_s))
        instance = _instantiate(store, module, funcs, f"atom {guid}", runtime)
        self._inst.bind(instance)
        exports = instance.exports(store)
        self._globals: list[tuple[str, str, wasmtime.Global]] = []
        for name, kind in module.mutable_globals:
            item = exports[name]
            assert isinstance(item, wasmtime.Global)
            self._globals.append((name, kind, item))
        # ABI.md: after a trap the runtime puts the C stack pointer back where
        # the trapped entry found it, or every trap would leak stack frames.
        sp = exports.get(_STACK_POINTER)
        self._sp: wasmtime.Global | None = sp if isinstance(sp, wasmtime.Global) else None
        self._initial_sp = self._read_sp()
        # The stack pointer whenever no entry of the atom runs.
        self._idle_sp = self._initial_sp

    # -- public -------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Completed calls and handler runs (replays of request ids excluded)."""
        return self._generation

    @property
    def busy(self) -> bool:
        return self._running

    @property
    def node_name(self) -> str:
        return self._host.node_name

    def invoke(
        self,
        method: str,
        args: bytes,
        *,
        request_id: str = "",
        chain: tuple[str, ...] = (),
        timeout: float | None = None,
        open_chain: frozenset[str] | tuple[str, ...] = frozenset(),
    ) -> bytes:
        """Run ``method`` with msgpack ``args``; return the msgpack result.

        ``timeout`` (seconds; the runtime's ``default_timeout_s`` when None)
        bounds the whole call, waits included. ``open_chain`` names the atoms of
        ``chain`` that take calls while blocked (reentrant or daemon atoms).
        """
        if request_id:
            record = self.replies.lookup(request_id, method=method, guid=self.guid)
            if record is not None:
                return _replay(record)
        if self.guid in chain and not self.reentrant:
            raise CallCycleError(
                f"call cycle: atom {self.guid} is already on the call path "
                f"({' -> '.join(chain)}) and is not reentrant (method {method})"
            )
        if len(args) > self._rt.max_payload_bytes:
            raise PayloadTooLargeError(
                f"atom {self.guid}: arguments of {method} are {len(args)} bytes, over the "
                f"{self._rt.max_payload_bytes}-byte limit"
            )
        wait = self._rt.default_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + wait
        opened = frozenset(open_chain)
        job: _Job | None = None
        if self.reentrant or self.module.is_daemon:
            job = _Job(method, args, request_id, chain, deadline, open_chain=opened)
        if not self._enter(job, deadline, method, chain, opened):
            assert job is not None
            if job.error is not None:
                raise job.error
            return job.result
        try:
            return self._run_recorded(method, args, request_id, chain, deadline, opened)
        finally:
            self._leave()

    def deliver(self, code: int, payload: bytes) -> None:
        """Queue an interrupt for the atom's ``hx_interrupt`` (from ``send``)."""
        with self._cv:
            if self._closed:
                raise UnreachableError(f"atom {self.guid} is closed on node {self.node_name}")
            # The mailbox lives in the host and travels in every snapshot: bounded.
            if len(self._mail) >= MAX_MAIL_ITEMS:
                raise CapacityError(
                    f"atom {self.guid}'s mailbox is full ({len(self._mail)} messages waiting); "
                    "message refused"
                )
            queued = sum(len(m.payload) for m in self._mail if isinstance(m, _Interrupt))
            if queued + len(payload) > MAX_MAIL_BYTES:
                raise CapacityError(
                    f"atom {self.guid}'s mailbox is full ({queued} bytes waiting, at most "
                    f"{MAX_MAIL_BYTES}); a message of {len(payload)} bytes refused"
                )
            self._mail.append(_Interrupt(code, payload))
            self._cv.notify_all()
            idle = not self._running and not self.module.is_daemon
        if idle:
            self._schedule_idle()

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
            job = _Job("snapshot", b"", "", (), deadline, snapshot=True)
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
                if isinstance(waiter, _Turn):
                    waiter.event.set()
        daemon = self._daemon
        if daemon is not None and daemon is not threading.current_thread():
            daemon.join(timeout=self._budget_s + 1)
            if daemon.is_alive():
                logger.warning("atom %s: daemon did not stop within its deadline", self.guid)

    # -- entering and leaving ----------------------------------------------

    def _closed_error(self) -> UnreachableError:
        return UnreachableError(f"atom {self.guid} is closed on node {self.node_name}")

    def _enter(
        self,
        job: _Job | None,
        deadline: float | None,
        method: str,
        chain: tuple[str, ...] = (),
        open_chain: frozenset[str] = frozenset(),
    ) -> bool:
        """Take the atom for this thread (True), or return False once the atom's
        own thread ran ``job`` at a blocking point."""
        with self._cv:
            if self._closed:
                raise self._closed_error()
            if not self._running and not self._waiters:
                self._running = True
                return True
            if job is None:
                turn = _Turn()
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
                    if job.state == _DONE:
                        return False
                    if job.state == _PENDING:
                        if self._closed:
                            raise self._closed_error()
                        if not self._running and self._waiters[0] is ticket:
                            self._mail.remove(job)
                            job.state = _TAKEN
                            self._running = True
                            return True
                    wait: float | None = None
                    if deadline is not None and job.state == _PENDING:
                        wait = deadline - time.monotonic()
                        if wait <= 0:
                            self._mail.remove(job)
                            raise DeadlineExceededError(
                                f"atom {self.guid} stayed busy: {method} waited past its "
                                "deadline for its turn"
                            )
                    self._cv.wait(wait)
            finally:
                self._waiters.remove(ticket)
                self._wake_next()

    def _wait_turn(
        self,
        turn: _Turn,
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
                        # Not a "timeout": retrying elsewhere would only queue here again.
                        raise DeadlineExceededError(
                            f"atom {self.guid} stayed busy: {method} waited past its "
                            "deadline for its turn"
                        )
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
        two calls crossing each other at least one finds the other's wait.
        Longer cycles (through atoms on neither chain) still end at the deadline.
        """
        with self._cv:
            targets = list(self._outgoing.values())
        for target in targets:
            guid = self._target_guid(target)
            if guid in stuck:
                raise CallCycleError(
                    f"wait cycle: atom {self.guid} is busy with a call that waits on atom "
                    f"{guid}, which waits (call path {' -> '.join(chain)}) for this call to "
                    f"{self.guid} ({method}); neither could ever go on"
                )

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
        if isinstance(head, _Turn):
            head.event.set()
        else:
            self._cv.notify_all()

    def _leave(self) -> None:
        with self._cv:
            self._running = False
            self._wake_next()
            pending = bool(self._mail) and not self._closed and not self.module.is_daemon
        if pending:
            self._schedule_idle()

    def _has_mail(self) -> bool:
        with self._cv:
            return bool(self._mail)

    # -- running code -------------------------------------------------------

    def _run_recorded(
        self,
        method: str,
        args: bytes,
        request_id: str,
        chain: tuple[str, ...],
        deadline: float | None,
        open_chain: frozenset[str] = frozenset(),
    ) -> bytes:
        if request_id:
            # A duplicate may have queued behind the first run of this id.
            record = self.replies.lookup(request_id, method=method, guid=self.guid)
            if record is not None:
                return _replay(record)
        try:
            result = self._execute(method, args, chain, deadline, open_chain)
        except HermesError as exc:
            self._generation += 1
            if request_id:
                self._record(ReplyRecord(request_id, exc.kind, str(exc).encode("utf-8")))
            raise
        self._generation += 1
        if request_id:
            self._record(ReplyRecord(request_id, "", result))
        return result

    def _record(self, record: ReplyRecord) -> None:
        self.replies.record(record)
        self._limit_memory()

    def _execute(
        self,
        method: str,
        args: bytes,
        chain: tuple[str, ...],
        deadline: float | None,
        open_chain: frozenset[str] = frozenset(),
    ) -> bytes:
        inst = self._inst
        name = method.encode("utf-8")
        deadline = self._nested_deadline(deadline)
        budget = self._budget_s
        if deadline is not None:
            budget = min(budget, max(0.0, deadline - time.monotonic()))
        if self.reentrant or self.module.is_daemon:
            open_chain = open_chain | {self.guid}
        frame = _Frame(method, (*chain, self.guid), budget, deadline, open_chain)
        sp = self._entry_sp()
        frames = self._frames
        frames.append(frame)
        frame.seg_start = time.monotonic()
        ticks = self._budget_ticks if budget == self._budget_s else self._rt.ticks_for(budget)
        _set_epoch_deadline(inst.ctx, ticks)
        try:
            ptr = inst.alloc_write(name + args)
            status = inst.call("hx_invoke", (ptr, len(name), ptr + len(name), len(args)), True)
        except abi.WasmFault as fault:
            self._unwind_stack(sp)
            raise self._translate(fault, method) from fault
        finally:
            frames.pop()
            if frames:
                self._resume()
        if frame.too_large:
            raise PayloadTooLargeError(
                f"atom {self.guid}: result of {method} is {frame.too_large} bytes, over the "
                f"{self._rt.max_payload_bytes}-byte limit"
            )
        reply = frame.reply
        if status != 0:
            text = reply.decode("utf-8", errors="replace") if reply else f"status {status}"
            raise MethodError(f"atom {self.guid}: {method} failed: {text}")
        return reply if reply is not None else _MSGPACK_NIL

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

    def _translate(self, fault: abi.WasmFault, what: str) -> HermesError:
        cause = fault.cause
        while isinstance(cause, abi.WasmFault):  # raised in a syscall that called hx_alloc
            cause = cause.cause
        if isinstance(cause, HermesError):
            return cause
        limit = self._rt.memory_limit_bytes
        if isinstance(cause, abi.BadAllocError):
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
        if (
            isinstance(cause, MemoryError)
            or self._inst.memory_size + max(_PAGE, limit // 8) > limit
        ):
            return MemoryLimitError(
                f"atom {self.guid}: {what} hit the memory cap of {limit} bytes "
                f"({self._usage_text()}; {fault.message})"
            )
        return AtomTrapError(f"atom {self.guid}: {what} trapped: {fault.message}")

    def _run_init(self, init_args: bytes) -> None:
        inst = self._inst
        deadline = time.monotonic() + self._rt.default_timeout_s
        frame = _Frame("hx_init", (self.guid,), self._budget_s, deadline)
        sp = self._entry_sp()
        self._frames.append(frame)
        frame.seg_start = time.monotonic()
        _set_epoch_deadline(inst.ctx, self._rt.ticks_for(self._budget_s))
        self._running = True
        try:
            ptr = inst.alloc_write(init_args) if init_args else 0
            status = inst.call("hx_init", (ptr, len(init_args)), True)
        except abi.WasmFault as fault:
            self._unwind_stack(sp)
            raise self._translate(fault, "hx_init") from fault
        finally:
            self._frames.pop()
            self._running = False
        if status != 0:
            text = frame.reply.decode("utf-8", errors="replace") if frame.reply else ""
            raise MethodError(f"atom {self.guid}: hx_init failed (status {status}): {text}")

    def _run_handler(self, item: _Interrupt | _FutureDone) -> None:
        inst = self._inst
        if isinstance(item, _Interrupt):
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
        frame = _Frame(label, (self.guid,), self._budget_s, deadline)
        sp = self._entry_sp()
        self._frames.append(frame)
        frame.seg_start = time.monotonic()
        _set_epoch_deadline(inst.ctx, self._rt.ticks_for(self._budget_s))
        try:
            ptr = inst.alloc_write(item.payload)
            if isinstance(item, _Interrupt):
                inst.call(export, (item.code, ptr, len(item.payload)), False)
            else:
                inst.call(export, (item.future_id, item.status, ptr, len(item.payload)), False)
        except abi.WasmFault as fault:
            self._unwind_stack(sp)
            error = self._translate(fault, label)
            logger.warning("atom %s: handler failed: %s", self.guid, error)
        finally:
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
        _set_epoch_deadline(self._inst.ctx, self._rt.ticks_for(remaining))

    @contextlib.contextmanager
    def _blocked(self) -> Iterator[None]:
        """The atom waits outside its own code: its CPU deadline stands still."""
        self._pause()
        try:
            yield
        finally:
            if self._frames:
                self._resume()

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
                    if isinstance(item, _Job):
                        item.state = _TAKEN
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

    def _dispatch(self, item: _Mail) -> None:
        if not isinstance(item, _Job):
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
            item.state = _DONE
            self._cv.notify_all()

    # -- reactive idle delivery and daemons ----------------------------------

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

    def _start_daemon(self) -> None:
        with self._cv:
            self._running = True
        self._daemon = threading.Thread(
            target=self._daemon_main, name=f"hx-daemon-{self.guid}", daemon=True
        )
        self._daemon.start()

    def _daemon_main(self) -> None:
        inst = self._inst
        frame = _Frame("hx_main", (self.guid,), self._budget_s, None)
        frame.per_segment = True
        sp = self._entry_sp()
        self._frames.append(frame)
        frame.seg_start = time.monotonic()
        _set_epoch_deadline(inst.ctx, self._rt.ticks_for(self._budget_s))
        try:
            inst.call("hx_main", (), False)
            logger.info("atom %s: hx_main returned", self.guid)
        except abi.WasmFault as fault:
            self._unwind_stack(sp)
            logger.error(
                "atom %s: daemon stopped: %s", self.guid, self._translate(fault, "hx_main")
            )
        except Exception:
            logger.exception("atom %s: daemon failed inside the runtime", self.guid)
        finally:
            self._frames.pop()
            self._leave()

    # -- syscalls (abi.Syscalls) -------------------------------------------------

    def _context(self) -> CallContext:
        if not self._frames:
            return CallContext(self.guid, (self.guid,), None)
        frame = self._frames[-1]
        timeout = None if frame.deadline is None else max(0.0, frame.deadline - time.monotonic())
        return CallContext(self.guid, frame.chain, timeout, tuple(sorted(frame.open_chain)))

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
                logger.warning(
                    "atom %s: %s logged more than %d lines or %d bytes: the rest of its log "
                    "output is dropped",
                    self.guid,
                    frame.method,
                    MAX_LOG_LINES_PER_CALL,
                    MAX_LOG_BYTES_PER_CALL,
                )
                return
        logger.log(abi._LOG_LEVELS.get(level, logging.INFO), "atom %s: %s", self.guid, text)

    # -- KV and the memory cap -----------------------------------------------------

    def _host_bytes(self) -> int:
        """What the atom's KV and reply table count toward its memory cap."""
        return (
            self._kv_bytes + self.replies.payload_bytes + len(self.replies) * REPLY_ENTRY_OVERHEAD
        )

    def _usage_text(self) -> str:
        return (
            f"linear memory {self._inst.memory_size} + KV {self._kv_bytes} + "
            f"reply table {self._host_bytes() - self._kv_bytes} bytes"
        )

    def _limit_memory(self) -> None:
        """Linear memory may grow only into what the KV and the reply table leave."""
        cap = self._rt.memory_limit_bytes
        allowance = max(0, cap - self._host_bytes()) // _PAGE * _PAGE
        if allowance != self._memory_allowance:
            self._memory_allowance = allowance
            self._store.set_limits(memory_size=allowance, table_elements=MAX_TABLE_ELEMENTS)

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
        return abi.STATUS_OK

    def sys_kv_del(self, key: bytes) -> int:
        self._check_going_on("kv_del")
        old = self.kv.pop(key, None)
        if old is None:
            return abi.STATUS_ERROR
        self._kv_bytes -= len(key) + len(old) + KV_ENTRY_OVERHEAD
        self._limit_memory()
        return abi.STATUS_OK

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

        def run() -> None:
            try:
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
                    self._mail.append(_FutureDone(future_id, status, data))
                self._cv.notify_all()
                idle = not sync and not self._running and not self.module.is_daemon
            if idle:
                self._schedule_idle()

        if not self._submit_outgoing(run):
            logger.info(
                "atom %s: invoke %s.%s not started: runtime closed", self.guid, target, method
            )
            with self._cv:
                self._outgoing.pop(future_id, None)
            return -1
        return future_id

    def _submit_outgoing(self, run: Callable[[], None]) -> bool:
        """Run ``run`` on the shared syscall pool, at most MAX_OUTGOING_PER_ATOM at once.

        An atom's further invokes wait in its own FIFO, not in the pool's
        queue: one atom calling a slow target cannot take the threads every
        other atom of the node needs for its own outgoing calls.
        """
        with self._cv:
            if self._outgoing_running >= MAX_OUTGOING_PER_ATOM:
                self._outgoing_queue.append(run)
                return True
            self._outgoing_running += 1
        try:
            self._rt.syscall_pool.submit(self._outgoing_slot, run)
        except RuntimeError:
            with self._cv:
                self._outgoing_running -= 1
            return False
        return True

    def _outgoing_slot(self, run: Callable[[], None] | None) -> None:
        while run is not None:
            try:
                run()
            finally:
                with self._cv:
                    run = self._outgoing_queue.popleft() if self._outgoing_queue else None
                    if run is None:
                        self._outgoing_running -= 1

    def sys_invoke(self, target: str, method: str, args: bytes) -> tuple[int, bytes]:
        end = self._wait_deadline()
        if end is not None and end <= time.monotonic():
            raise self._deadline_error(f"invoke of {target}.{method}")
        future_id = self._start_host_invoke(target, method, args, sync=True)
        if future_id < 0:
            return abi.STATUS_ERROR, f"unreachable: node {self.node_name} is shutting down".encode()
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
        if result is None:
            # Raised through the atom's frames like a trap: they unwind, the call fails.
            raise self._deadline_error(f"invoke of {target}.{method}")
        return result

    def sys_invoke_async(self, target: str, method: str, args: bytes) -> int:
        return self._start_host_invoke(target, method, args, sync=False)

    def sys_send(self, target: str, code: int, payload: bytes) -> int:
        self._check_going_on("send")
        with self._blocked():
            try:
                self._host.send(self._context(), target, code, payload)
            except HermesError as exc:
                logger.info("atom %s: send to %s failed: %s", self.guid, target, exc)
                return abi.STATUS_ERROR
        return abi.STATUS_OK

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

    def sys_lookup(self, mode: str, scope: str | None, pattern: str) -> tuple[int, bytes]:
        self._check_going_on("lookup")
        with self._blocked():
            try:
                found = self._host.lookup(self._context(), mode, pattern, scope)
            except HermesError as exc:
                return abi.STATUS_ERROR, f"{exc.kind}: {exc}".encode()
        return abi.STATUS_OK, abi.pack_strings(found)

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
                return abi.STATUS_ERROR
        return abi.STATUS_OK

    def sys_move_to(self, node: str) -> int:
        try:
            self._host.move_to(self._context(), node)
        except HermesError as exc:
            logger.warning("atom %s: move_to %s refused: %s", self.guid, node, exc)
            return abi.STATUS_ERROR
        return abi.STATUS_OK

    def sys_checkpoint(self) -> int:
        try:
            self._host.checkpoint(self._context())
        except HermesError as exc:
            logger.info("atom %s: checkpoint refused: %s", self.guid, exc)
            return abi.STATUS_ERROR
        return abi.STATUS_OK

    # -- state ------------------------------------------------------------------

    def _capture_state(self) -> AtomState:
        inst = self._inst
        size = inst.memory_size
        # Read in place: memory_segments copies it piece by piece (see hermesx.core.snapshot).
        memory = memoryview((ctypes.c_char * size).from_address(inst.base)) if size else b""
        globals_ = tuple((name, kind, g.value(self._store)) for name, kind, g in self._globals)
        with self._cv:
            interrupts = tuple((m.code, m.payload) for m in self._mail if isinstance(m, _Interrupt))
            futures = tuple(
                (m.future_id, m.status, m.payload) for m in self._mail if isinstance(m, _FutureDone)
            )
            next_future = self._next_future
        return AtomState(
            module_hash=self.module.hash,
            guid=self.guid,
            memory_size=size,
            memory=memory_segments(memory),
            globals=globals_,
            kv=dict(self.kv),
            replies=self.replies.records(),
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
                memory.grow(self._store, (state.memory_size - current) // _PAGE)
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
            self._mail.append(_Interrupt(code, payload))
        for future_id, status, payload in state.futures:
            self._mail.append(_FutureDone(future_id, status, payload))
        self._next_future = state.next_future_id
        self._generation = state.generation


def _replay(record: ReplyRecord) -> bytes:
    if not record.error_kind:
        return record.payload
    raise error_from_wire(record.error_kind, record.payload.decode("utf-8", errors="replace"))


def run_once(wasm_path: pathlib.Path, method: str, args: bytes, init_args: bytes = b"") -> bytes:
    """``hermesx run``: create the atom in-process (no cluster) and call one method."""
    try:
        wasm = pathlib.Path(wasm_path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read module {wasm_path}: {exc.strerror}") from exc
    runtime = Runtime()
    try:
        module = runtime.load(wasm)
        atom = runtime.create(module, str(GUID.new("local")), StandaloneHost(), init_args)
        return atom.invoke(method, args)
    finally:
        runtime.close()
