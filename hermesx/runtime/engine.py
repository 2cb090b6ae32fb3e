"""The runtime of a node: one wasmtime engine and the threads that serve its atoms.

See docs/DESIGN.md §3.

A :class:`Runtime` owns the engine (configured so that each atom's memory
reserves only its cap, see :data:`MEMORY_GUARD_BYTES`), its epoch ticker (CPU
deadlines), a pool that runs the atoms' outgoing syscalls (``invoke``,
``invoke_async``), a small pool that delivers interrupts to idle reactive
atoms, and the cache of loaded modules. It creates atoms and restores them
from snapshots, up to the number of atoms the process can hold
(:func:`atom_capacity`).
"""

from __future__ import annotations

import gc
import hashlib
import math
import pathlib
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import wasmtime

from hermesx.core.errors import (
    CapacityError,
    ConfigurationError,
    PayloadTooLargeError,
    StorageError,
)
from hermesx.core.snapshot import decode_state
from hermesx.runtime.atom import Atom
from hermesx.runtime.host import AtomHost
from hermesx.runtime.modules import PAGE, LoadedModule, check_abi_version, compile_module
from hermesx.runtime.native import crossing_module

__all__ = ["MEMORY_GUARD_BYTES", "SYSCALL_THREADS", "Runtime", "atom_capacity"]

# Address space per atom: a linear memory reserves exactly the memory cap
# (rounded to whole pages) plus this guard, instead of wasmtime's default
# 4 GiB + 32 MiB, so one process holds 100,000 atoms. Memory accesses are then
# bounds-checked in code: a call costs the same, wasm code that mostly writes
# memory runs ~1.4x slower (`fill_1mib_ms` of `hermesx bench runtime`). The
# memory can never grow past the cap.
MEMORY_GUARD_BYTES = 64 * 1024
# Threads of a runtime's syscall pool: atoms' outgoing invokes run there.
SYSCALL_THREADS = 32
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
    return -(-memory_limit_bytes // PAGE) * PAGE


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
        if memory_limit_bytes < PAGE:
            raise ConfigurationError(f"memory_limit_bytes must be at least {PAGE}")
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
        crossing_module()  # built now, on a machine's first runtime, not at its first atom

        # A tick of 1-10 ms keeps deadline granularity under ~5% of the deadline
        # without waking the ticker more than needed.
        self.tick_s = min(0.010, max(0.001, deadline_ms / 1000 / 50))
        # Ticks so far, counted beside the engine's epoch (which the C API does
        # not let us read): an atom whose last deadline was set in this same
        # tick need not set it again (WasmInstance.set_deadline).
        self.epoch = 0
        self._stop = threading.Event()
        self._ticker = threading.Thread(
            target=self._tick, name=f"hx-epoch-{node_name}", daemon=True
        )
        self._ticker.start()
        self._modules: dict[str, LoadedModule] = {}
        self._modules_lock = threading.Lock()
        self.syscall_pool = ThreadPoolExecutor(
            SYSCALL_THREADS, thread_name_prefix=f"hx-syscall-{node_name}"
        )
        # Tasks given to the pool and not finished (AtomSyscalls counts them): a link of a
        # chain of calls, itself on the pool, that finds no thread free is refused rather
        # than queued behind the links that wait on it (docs/DESIGN.md §3).
        self.syscall_threads = SYSCALL_THREADS
        self.syscall_tasks = 0
        self.syscall_tasks_lock = threading.Lock()
        self.idle_pool = ThreadPoolExecutor(2, thread_name_prefix=f"hx-idle-{node_name}")
        self._atoms: weakref.WeakSet[Atom] = weakref.WeakSet()
        self._closed = False

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.engine.increment_epoch()
            self.epoch += 1

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
        module = compile_module(self.engine, self.cache_dir, wasm, digest)
        check_abi_version(self, module)
        with self._modules_lock:
            return self._modules.setdefault(digest, module)

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
