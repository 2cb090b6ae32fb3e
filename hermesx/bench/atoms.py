"""How many small active atoms one node process holds (``hermesx bench atoms``).

See docs/DESIGN.md §3, §8.

Creates ``count`` counter atoms in one runtime with the node's default memory
cap, calls each once, and reports what each costs the process: memory
mappings (bounded by ``vm.max_map_count``), address space and resident
memory, plus the creation rate and the call latency once they all exist. The
runtime's capacity (from ``vm.max_map_count`` and the address space) is
reported too; when ``count`` is over it, the bench stops at the first
``capacity`` error and says how many atoms it reached.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import time
from collections.abc import Callable

import msgpack

from hermesx.bench.runtime import _module
from hermesx.core.errors import CapacityError
from hermesx.runtime.atom import Atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost

__all__ = ["run"]


def _maps() -> int:
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


def _statm() -> tuple[int, int]:
    """(address space, resident) bytes of this process."""
    with open("/proc/self/statm") as f:
        size, resident = f.read().split()[:2]
    page = os.sysconf("SC_PAGE_SIZE")
    return int(size) * page, int(resident) * page


def run(count: int = 100_000, progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Create ``count`` atoms in one process; flat figures whose names carry their units."""
    wasm, _is_c = _module("counter")
    runtime = Runtime(node_name="bench")
    atoms: list[Atom] = []
    host = StandaloneHost("bench")
    incr = msgpack.packb(1)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection over 100,000 atoms would only add pauses
    capacity_hit = 0.0
    try:
        module = runtime.load(wasm)
        maps_before = _maps()
        space_before, resident_before = _statm()
        started = time.perf_counter()
        try:
            for i in range(count):
                atom = runtime.create(module, f"bench:{i:032x}", host)
                atom.invoke("incr", incr)
                atoms.append(atom)
                if progress is not None and (i + 1) % 10_000 == 0:
                    progress(f"{i + 1} atoms")
        except CapacityError as exc:
            capacity_hit = 1.0
            if progress is not None:
                progress(f"stopped at {len(atoms)} atoms: {exc}")
        elapsed = time.perf_counter() - started
        created = max(1, len(atoms))
        space, resident = _statm()
        maps = _maps()
        samples: list[float] = []
        for atom in random.sample(atoms, min(2000, len(atoms))):
            t0 = time.perf_counter()
            atom.invoke("incr", incr)
            samples.append((time.perf_counter() - t0) * 1e6)
        return {
            "atoms_requested": float(count),
            "atoms_created": float(len(atoms)),
            "capacity_error": capacity_hit,
            "capacity_atoms": float(runtime.max_atoms),
            "create_and_call_us_per_atom": elapsed / created * 1e6,
            "maps_per_atom": (maps - maps_before) / created,
            "address_space_mib_per_atom": (space - space_before) / created / 2**20,
            "resident_kib_per_atom": (resident - resident_before) / created / 1024,
            "call_p50_us_among_all": statistics.median(samples) if samples else 0.0,
            "vm_max_map_count": float(_read_max_map_count()),
        }
    finally:
        runtime.close()
        atoms.clear()
        if gc_was_enabled:
            gc.enable()


def _read_max_map_count() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0
