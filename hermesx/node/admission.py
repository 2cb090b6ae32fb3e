"""Admission: how many invocations a node takes, in all and per atom (docs/DESIGN.md §4).

A node keeps some of its gRPC workers free of invocations, for Status and
the other control calls; one atom (running here, or being forwarded to) may
hold only its share of the rest, so one slow atom cannot take every worker;
and past a pressure mark, an atom that already has a couple of calls gets no
more, so several slow atoms together (a tenant of them) cannot take the
workers of the rest. A refused call is answered at once with
:class:`CapacityError`: try later.

Each ``refuse_*`` method either returns the refusal or counts the call in;
the matching ``release_*`` counts it out.
"""

from __future__ import annotations

import threading
import time

from hermesx.core.errors import CapacityError
from hermesx.core.identity import TAD
from hermesx.node.catalog import ActiveAtom
from hermesx.node.config import NodeConfig
from hermesx.rpc.convert import tad_to_pb
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.status import pb_error

__all__ = ["PRESSED_CALLS_PER_ATOM", "Admission"]

# Calls one atom may have in flight while the node is under pressure.
PRESSED_CALLS_PER_ATOM = 2


class Admission:
    """The invocation limits of one node, from its number of workers."""

    def __init__(self, config: NodeConfig) -> None:
        self._name = config.name
        self._workers = config.workers
        # Workers kept free of invocations, for Status and the other control RPCs.
        self._reserved_workers = min(config.workers - 1, max(4, config.workers // 8))
        self._max_invokes = config.workers - self._reserved_workers
        self._max_calls_per_atom = config.max_calls_per_atom or max(1, config.workers // 4)
        # Past this many invocations the node is under pressure.
        self._pressure_invokes = max(1, self._max_invokes * 3 // 4)
        self.invokes = 0  # Invoke RPCs being served
        # Checkpoint, Passivate and Migrate RPCs (any role may send them) wait on their
        # atom, up to 30 s: past this many at once they are refused, so that with the
        # invocations at their limit a worker stays free for Status (the node's watchdog
        # gives up the session of a node that answers it nothing for 10 s).
        self._max_waiting_control = max(1, self._reserved_workers - 1)
        self.waiting_control = 0
        # GUID -> calls forwarded (or waiting for the atom's arrival); a plain dict: a
        # Counter's missing keys and deletions are Python code on every forwarded call.
        self._forwarding: dict[str, int] = {}
        self._lock = threading.Lock()

    def refuse_invoke(self) -> pb.InvokeReply | None:
        """An Invoke RPC arrived: its refusal when the node serves its limit already."""
        with self._lock:
            if self.invokes < self._max_invokes:
                self.invokes += 1
                return None
        return pb.InvokeReply(
            error=pb_error(
                CapacityError(
                    f"node {self._name} is serving {self._max_invokes} invocations, its "
                    f"limit ({self._reserved_workers} of {self._workers} workers stay "
                    "free for control calls); try later"
                )
            )
        )

    def release_invoke(self) -> None:
        with self._lock:
            self.invokes -= 1

    def refuse_control(self, what: str) -> CapacityError | None:
        """A Checkpoint, Passivate or Migrate RPC arrived: its refusal when that many wait
        already (release it with :meth:`release_control` otherwise)."""
        with self._lock:
            if self.waiting_control < self._max_waiting_control:
                self.waiting_control += 1
                return None
        return CapacityError(
            f"node {self._name} is serving {self._max_waiting_control} checkpoint, passivate "
            f"and migrate requests, its limit; {what} refused, try later"
        )

    def release_control(self) -> None:
        with self._lock:
            self.waiting_control -= 1

    def refuse_atom_call(self, active: ActiveAtom, method: str) -> pb.InvokeReply | None:
        """A call to run in ``active``: its refusal when the atom has its share of calls."""
        limit = self._max_calls_per_atom
        if self.invokes >= self._pressure_invokes:
            limit = min(limit, PRESSED_CALLS_PER_ATOM)
        with active.cond:
            if active.calls < limit:
                active.calls += 1
                return None
            pressed = " while the node is busy" if limit < self._max_calls_per_atom else ""
            return pb.InvokeReply(
                error=pb_error(
                    CapacityError(
                        f"atom {active.guid} on node {self._name} already has "
                        f"{active.calls} calls waiting or running (limit {limit}{pressed}); "
                        f"{method} refused, try later"
                    )
                ),
                tad=tad_to_pb(active.tad),
            )

    def release_atom_call(self, active: ActiveAtom) -> None:
        with active.cond:
            active.calls -= 1

    def enter_idle(self, active: ActiveAtom) -> bool:
        """The quick case of a call to run in ``active``: when the atom is active and has
        no other call, count the call in and fix the atom for it, as
        :meth:`refuse_atom_call` and then :meth:`ActiveAtom.fixed` would, in one hold of
        its lock (True; :meth:`leave_idle` undoes both); otherwise do nothing (False:
        take the general path). One call is under every atom's limit."""
        # (The condition's own acquire and release: its "with" costs two Python calls.)
        cond = active.cond
        cond.acquire()
        try:
            if active.calls or active.state != "active":
                return False
            active.calls = 1
            active.inflight += 1
            return True
        finally:
            cond.release()

    def leave_idle(self, active: ActiveAtom) -> None:
        """The call let in by :meth:`enter_idle` ended: unfix the atom, count the call out."""
        cond = active.cond
        cond.acquire()
        try:
            active.calls -= 1
            active.inflight -= 1
            active.last_used = time.monotonic()
            cond.notify_all()  # a move or passivation waits for its calls to end
        finally:
            cond.release()

    def refuse_forward(self, guid: str, tad: TAD, method: str) -> pb.InvokeReply | None:
        """A call to forward to ``guid`` at ``tad``: its refusal when this node forwards
        the atom's share of calls already (a slow atom elsewhere must not take our workers)."""
        with self._lock:
            held = self._forwarding.get(guid, 0)
            if held < self._max_calls_per_atom:
                self._forwarding[guid] = held + 1
                return None
            return pb.InvokeReply(
                error=pb_error(
                    CapacityError(
                        f"node {self._name} is already forwarding {held} "
                        f"calls to atom {guid} (limit {self._max_calls_per_atom}); "
                        f"{method} refused, try later"
                    )
                ),
                tad=tad_to_pb(tad),
            )

    def release_forward(self, guid: str) -> None:
        with self._lock:
            held = self._forwarding.pop(guid, 0) - 1
            if held > 0:
                self._forwarding[guid] = held
