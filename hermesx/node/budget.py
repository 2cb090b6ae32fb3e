"""What a node may commit to its atoms: how many it holds, and their memory (docs/DESIGN.md §3).

Each atom may grow to its memory cap (``memory_limit_bytes``), so a node that
takes every atom it is sent promises memory it does not have: a client
creating atoms in a loop could make the node's atoms, together, ask for far
more than the machine holds. :class:`AtomBudget` bounds both the number of
atoms a node holds (active, staged, being created) and the sum of their caps.
A create or a move here past either is refused at once with ``capacity``,
before anything is written or registered; so is a storesite's activation of a
dormant atom. An atom recovered from a dead node is counted but never
refused: recovery must find every atom a home (docs/DESIGN.md §6 "Activation
and a node's budget").
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import threading
from collections.abc import Iterator

from hermesx.core.errors import CapacityError
from hermesx.node.catalog import Catalog

__all__ = ["MEMORY_OVERCOMMIT", "RAM_PER_ATOM_BYTES", "AtomBudget", "machine_memory"]

# The default budgets, from the machine's memory: an idle atom costs the node
# about 40 KiB, so one atom per 256 KiB keeps idle atoms to a sixth of the
# memory; atoms rarely fill their caps, so the caps together may promise 16
# times the memory (a node of 64 MiB atoms on 16 GiB holds 4,096 of them).
RAM_PER_ATOM_BYTES = 256 * 1024
MEMORY_OVERCOMMIT = 16


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit if lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in _cgroup_limits():
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def _cgroup_limits() -> list[pathlib.Path]:
    paths = [pathlib.Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")]  # cgroup v1
    try:
        lines = pathlib.Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        if line.startswith("0::"):  # cgroup v2: the process's own group
            paths.append(pathlib.Path("/sys/fs/cgroup") / line[3:].lstrip("/") / "memory.max")
    return paths


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


class AtomBudget:
    """The atoms node ``node`` may hold, and the memory their caps may add up to.

    ``max_atoms`` / ``max_memory_bytes`` of 0 take the defaults from the
    machine's memory; ``runtime_atoms`` (what the process can map) bounds the
    default number too.
    """

    def __init__(
        self,
        node: str,
        catalog: Catalog,
        *,
        atom_memory_bytes: int,
        max_atoms: int = 0,
        max_memory_bytes: int = 0,
        runtime_atoms: int | None = None,
    ) -> None:
        self._node = node
        self._catalog = catalog
        self.atom_memory_bytes = atom_memory_bytes
        ram = machine_memory() if not (max_atoms and max_memory_bytes) else 0
        self.max_atoms = max_atoms or max(1, ram // RAM_PER_ATOM_BYTES)
        if not max_atoms and runtime_atoms is not None:
            self.max_atoms = min(self.max_atoms, runtime_atoms)
        self.max_memory_bytes = max_memory_bytes or ram * MEMORY_OVERCOMMIT
        # Creations and moves here past the check, not yet in the catalog.
        self._taking = 0
        self._lock = threading.Lock()

    def held(self) -> int:
        """Atoms this node holds or is taking: active, staged, and being created."""
        return len(self._catalog.atoms) + len(self._catalog.staged) + self._taking

    def room(self) -> int:
        """How many more atoms this node takes now."""
        by_memory = self.max_memory_bytes // max(1, self.atom_memory_bytes)
        return max(0, min(self.max_atoms, by_memory) - self.held())

    def refusal(self, held: int) -> str:
        """Why one more atom does not fit beside ``held`` ones ("" when it does)."""
        if held >= self.max_atoms:
            return f"node {self._node} holds {held} atoms, its most (max_atoms {self.max_atoms})"
        committed = held * self.atom_memory_bytes
        if committed + self.atom_memory_bytes > self.max_memory_bytes:
            return (
                f"node {self._node} holds {held} atoms of {_mib(self.atom_memory_bytes)} each "
                f"({_mib(committed)}); one more passes its most of "
                f"{_mib(self.max_memory_bytes)} (max_atom_memory)"
            )
        return ""

    @contextlib.contextmanager
    def taking(self, what: str) -> Iterator[None]:
        """Hold room for one atom while it is created or staged here, or raise ``capacity``.

        The atom counts in the catalog once installed or staged; until then
        this holds its place, so two creates at once cannot both take the last.
        """
        with self._lock:
            refusal = self.refusal(self.held())
            if refusal:
                raise CapacityError(f"{refusal}; {what}")
            self._taking += 1
        try:
            yield
        finally:
            with self._lock:
                self._taking -= 1
