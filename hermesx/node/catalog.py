"""The catalog of a node: the atoms active here and the copies staged here (docs/DESIGN.md §4, §5).

An :class:`ActiveAtom` is an atom serving on this node with what the node
tracks about it: its TAD, the calls fixing it, its checkpoint sequence, and
its state (``active``, ``moving`` while a move or a passivation holds it,
``gone`` once it left). A :class:`StagedCopy` is a copy sent here by a move's
source (or a storesite's staged activation) that serves only once the move
commits. :class:`Catalog` holds both tables; every atom enters and leaves this
node through it.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from hermesx.core.errors import HermesError, MigrationError
from hermesx.core.identity import TAD
from hermesx.observe import atomlog, metrics
from hermesx.routing.stash import Stash
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.runtime.atom import Atom
from hermesx.runtime.delta import ChangeTracker

__all__ = ["ActiveAtom", "Catalog", "StagedCopy"]


@dataclass(eq=False)
class ActiveAtom:
    """An atom running here, with what the node tracks about it."""

    guid: str
    atom: Atom
    meta: pb.AtomMeta
    tad: TAD
    state: str = "active"  # active | moving | gone
    inflight: int = 0
    # Invocations here for this atom: waiting to fix it, queued or running.
    calls: int = 0
    checkpoint_seq: int = 0
    checkpointed_generation: int = 0
    # Held from a checkpoint's snapshot to drawing its seq, so seqs follow snapshots.
    checkpoint_lock: threading.Lock = field(default_factory=threading.Lock)
    # Incremental checkpoints (hermesx.node.checkpoints): the base of the next
    # delta (None: this atom checkpoints whole), held from a capture until the
    # storesite answered, and outgoing calls and sends made / last checkpointed.
    changes: ChangeTracker | None = None
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    outgoing: int = 0
    outgoing_checkpointed: int = 0
    # The generation held by the snapshot the last freeze (move, passivation) took.
    frozen_generation: int = 0
    last_checkpoint: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    move_request: str | None = None
    checkpoint_request: bool = False
    # Placement "follow-caller": which nodes the recent calls came from.
    callers: collections.Counter[str] = field(default_factory=collections.Counter)
    cond: threading.Condition = field(default_factory=threading.Condition)

    @contextlib.contextmanager
    def fixed(self, wait: float) -> Iterator[bool]:
        """Fix the atom for one call; yields False if it left (or is leaving for too long)."""
        deadline = time.monotonic() + wait
        with self.cond:
            if self.state == "moving":
                metrics.CALLS_HELD.inc()
            while self.state == "moving":
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            if self.state != "active":
                yield False
                return
            self.inflight += 1
        try:
            yield True
        finally:
            with self.cond:
                self.inflight -= 1
                self.last_used = time.monotonic()
                self.cond.notify_all()

    def freeze(self, wait: float) -> bytes:
        """Mark moving (new calls wait), wait for the running calls to unfix it, snapshot."""
        deadline = time.monotonic() + wait
        with self.cond:
            if self.state != "active":
                raise MigrationError(f"atom {self.guid} is already {self.state}")
            self.state = "moving"
            while self.inflight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.state = "active"
                    self.cond.notify_all()
                    raise MigrationError(
                        f"atom {self.guid} stayed fixed by a running call for {wait:.0f}s"
                    )
                self.cond.wait(left)
        try:
            snapshot, self.frozen_generation = self.atom.snapshot_with_generation()
        except HermesError:
            self.thaw()
            raise
        return snapshot

    def thaw(self) -> None:
        """Serve again after a freeze that did not end in the atom leaving."""
        with self.cond:
            if self.state == "moving":
                self.state = "active"
            self.cond.notify_all()

    def retire(self) -> None:
        """The atom left this node: calls waiting for it go elsewhere; its instance is closed."""
        with self.cond:
            self.state = "gone"
            self.cond.notify_all()
        self.atom.close()


@dataclass(eq=False)
class StagedCopy:
    """A copy sent here by a move's source, waiting for that move's COMMIT."""

    tad: TAD
    meta: pb.AtomMeta
    atom: Atom
    since: float = field(default_factory=time.monotonic)


class Catalog:
    """The atoms active on node ``node`` and the copies staged there."""

    def __init__(self, node: str, stash: Stash) -> None:
        self._node = node
        self._stash = stash
        # Read without the lock on the invocation path (a dict lookup is atomic).
        self.atoms: dict[str, ActiveAtom] = {}
        self._atoms_lock = threading.Lock()
        self.staged: dict[str, StagedCopy] = {}
        self.staged_lock = threading.Lock()
        # Counts arrivals and departures (install, drop, discard): calls waiting for an
        # atom on its way here (hermesx.node.arrivals) wake on it.
        self._changes = 0
        self._changed = threading.Condition(threading.Lock())

    @property
    def changes(self) -> int:
        """How many arrivals and departures there were so far (see :meth:`wait_change`)."""
        return self._changes

    def wait_change(self, seen: int, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for an arrival or departure after the ``seen``-th."""
        with self._changed:
            if self._changes == seen and timeout > 0:
                self._changed.wait(timeout)
            return self._changes

    def changed(self) -> None:
        """An atom arrived, left, or a staged copy was dropped: wake the calls waiting."""
        with self._changed:
            self._changes += 1
            self._changed.notify_all()

    def install(self, guid: str, atom: Atom, meta: pb.AtomMeta, tad: TAD) -> ActiveAtom:
        """Make ``atom`` the active copy of ``guid`` at ``tad``, replacing an older one."""
        active = ActiveAtom(guid, atom, meta, tad, checkpointed_generation=atom.generation)
        if not (atom.reentrant or atom.module.is_daemon):
            active.changes = ChangeTracker()
        with self._atoms_lock:
            old = self.atoms.get(guid)
            if old is not None:
                if old.tad.age >= tad.age:
                    atom.close()
                    raise MigrationError(
                        f"atom {guid} is already active on {self._node} at age {old.tad.age}"
                    )
                old.retire()
            self.atoms[guid] = active
        self._stash.update(guid, tad)
        atomlog.BOOK.arrived(guid, tad.age)
        self.changed()
        return active

    def drop(self, active: ActiveAtom, forward_to: TAD | None) -> None:
        """``active`` leaves this node; calls for it follow ``forward_to`` when given."""
        with self._atoms_lock:
            if self.atoms.get(active.guid) is active:
                del self.atoms[active.guid]
        try:
            if forward_to is not None:
                self._stash.update(active.guid, forward_to)
        finally:
            # Gone from here whatever the stash said: waiting calls go elsewhere.
            atomlog.BOOK.forget(active.guid)
            active.retire()
            self.changed()

    def drop_all(self) -> int:
        """Drop every staged copy and every active atom (fenced); returns how many were active."""
        for guid in list(self.staged):
            self.discard_staged(guid)
        with self._atoms_lock:
            dropped = list(self.atoms.values())
            self.atoms.clear()
        for active in dropped:
            atomlog.BOOK.forget(active.guid)
            active.retire()
        self.changed()
        return len(dropped)

    def close_active(self) -> None:
        """The node stops: close every active atom."""
        for active in list(self.atoms.values()):
            active.atom.close()
        self.atoms.clear()

    def discard_staged(self, guid: str) -> None:
        with self.staged_lock:
            staged = self.staged.pop(guid, None)
        if staged is not None:
            staged.atom.close()
            self.changed()

    def take_staged(self, guid: str) -> StagedCopy | None:
        with self.staged_lock:
            taken = self.staged.pop(guid, None)
        if taken is not None:
            self.changed()  # it serves next, or (refused) the calls waiting for it go on
        return taken
