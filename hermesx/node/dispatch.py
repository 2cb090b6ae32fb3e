"""Dispatch of invocations and messages on a node: run here, or forward (docs/DESIGN.md §4).

A call for an atom active here runs in it (within the admission limits);
a call for an atom the stash places elsewhere is forwarded along its TAD,
at most the call's hop limit times, then answered MOVED so the caller asks
the storesite; a call for an atom with a staged copy here settles that copy
first. After a call has run, the atom's checkpoint policy and placement
policy act, and a move the atom asked for starts in the background.
Messages (``send``) follow the same path without a reply of the atom.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from hermesx.core.errors import HermesError, UnreachableError
from hermesx.core.identity import TAD
from hermesx.node.admission import Admission
from hermesx.node.arrivals import Arrivals
from hermesx.node.catalog import ActiveAtom
from hermesx.node.checkpoints import EVERY_CALL, Checkpointing
from hermesx.node.context import NodeContext
from hermesx.node.placement import FOLLOW_CALLER, FollowCaller
from hermesx.observe import metrics, tracing
from hermesx.rpc.callserver import yield_reader
from hermesx.rpc.convert import tad_from_pb, tad_to_pb
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.status import pb_error

__all__ = ["DEADLINE_MARGIN_S", "Dispatcher"]

# How much earlier than its caller a call's waits in an atom end (at most).
DEADLINE_MARGIN_S = 0.5
# The longest a request may say its caller waits (a caller in another language may
# send inf or 1e300: a thread cannot wait that long, the clock would overflow).
LONGEST_WAIT_S = 1e6
# How long a message waits on the node it was forwarded to, or here for its atom to arrive.
SEND_WAIT_S = 30.0


def _atom_timeout(request: pb.InvokeRequest) -> float:
    """How long a call's waits in its atom may take: a little less than its caller waits,
    so the caller hears why its call ended instead of only that its deadline passed."""
    wait = request.timeout if request.timeout > 0 else 30.0
    return wait - min(DEADLINE_MARGIN_S, wait / 8)


class Dispatcher:
    """Serves and forwards the invocations and messages that reach this node."""

    def __init__(
        self,
        ctx: NodeContext,
        admission: Admission,
        checkpoints: Checkpointing,
        *,
        resolve_staged: Callable[[str], bool],
        move_later: Callable[[str, str], None],
    ) -> None:
        self._ctx = ctx
        self._node = ctx.name
        # The invocation path reads these on every call.
        self._atoms, self._stash, self._fencing = ctx.catalog.atoms, ctx.stash, ctx.fencing
        self._admission = admission
        self._checkpoints = checkpoints
        self._follow_caller = FollowCaller(ctx.name, ctx.naming)
        # A staged copy of the called atom: settle it (True: it serves here now).
        self._resolve_staged = resolve_staged
        # Calls for an atom on its way here wait for it (docs/DESIGN.md §4).
        self._arrivals = Arrivals(ctx.name, ctx.catalog, ctx.stash, resolve_staged)
        # A move the atom asked for, or its placement decided, after its call.
        self._move_later = move_later
        # Invocations answered, for the rate a console shows (Status.invocations).
        self._invoked = itertools.count(1)
        self.invocations = 0

    def serve_invoke(self, request: pb.InvokeRequest) -> pb.InvokeReply:
        """An invocation from another process, by gRPC or the call channel: :meth:`invoke`
        within the node's limit of invocations served at once."""
        admission = self._admission
        refused = admission.refuse_invoke()
        if refused is not None:
            return refused
        if request.timeout > LONGEST_WAIT_S:
            request.timeout = LONGEST_WAIT_S
        try:
            # The usual call first: its atom is here and idle (with tracing on, every
            # call goes through invoke, which then runs in its span).
            if not tracing.ON:
                active = self._atoms.get(request.guid)
                if active is not None:
                    reply = self._run_idle(active, request)
                    if reply is not None:
                        return reply
            return self.invoke(request)
        finally:
            admission.release_invoke()
            # Invocations answered, for the rate a console shows (Status.invocations).
            self.invocations = next(self._invoked)

    def invoke(self, request: pb.InvokeRequest) -> pb.InvokeReply:
        fencing = self._fencing
        if not (fencing.serving() or fencing.may_serve(f"{request.method} of atom {request.guid}")):
            return pb.InvokeReply(error=fencing.unavailable())
        guid = request.guid
        active = self._atoms.get(guid)
        if active is not None:
            reply = self._run_here(active, request)
            if reply is not None:
                return reply
        tad = self._stash.get(guid)
        # Only a forwarding node's TAD counts (a caller's first attempt has no hops).
        sent = tad_from_pb(request.tad) if request.hops and request.HasField("tad") else None
        arriving = self._arrivals.expected(guid, sent, tad)
        if arriving is not None:
            waited = self._await_arrival(request, arriving, sent)
            if waited is not None:
                return waited
            tad = self._stash.get(guid)  # newer than what we waited for: go on from it
        if tad is not None and tad.node != self._node:
            if request.hops < self.hop_limit(request.hop_limit):
                return self._forward(request, tad)
            reply = pb.InvokeReply(moved=tad_to_pb(tad), tad=tad_to_pb(tad))
            metrics.moved()
            if request.trace:
                reply.trace.append(pb.Hop(node=self._node, tad=tad_to_pb(tad), event="moved"))
            return reply
        if guid in self._ctx.catalog.staged and self._resolve_staged(guid):
            active = self._atoms.get(guid)
            if active is not None:
                settled = self._run_here(active, request)
                if settled is not None:
                    return settled
        reply = pb.InvokeReply(
            error=pb_error(UnreachableError(f"node {self._node} has no record of atom {guid}"))
        )
        if tad is not None:
            reply.tad.CopyFrom(tad_to_pb(tad))
        return reply

    def _await_arrival(
        self, request: pb.InvokeRequest, arriving: TAD, sent: TAD | None
    ) -> pb.InvokeReply | None:
        """The atom is on its way here at ``arriving``, newer than our stash: wait for it
        (within the call's time and the atom's share of workers forwarding) and run the
        call, rather than forward it back along the stash. None: go on by the stash."""
        guid = request.guid
        refused = self._admission.refuse_forward(guid, arriving, request.method)
        if refused is not None:
            return refused
        started = time.monotonic()
        try:
            yield_reader()  # it waits: not on its connection's reader
            came = self._arrivals.wait(guid, arriving, sent, _atom_timeout(request))
        finally:
            self._admission.release_forward(guid)
        if came is None:
            return None
        if isinstance(came, HermesError):
            reply: pb.InvokeReply | None = pb.InvokeReply(
                error=pb_error(came), tad=tad_to_pb(arriving)
            )
        else:
            if request.timeout > 0:  # deadlines are absolute: the wait spent some
                request.timeout -= time.monotonic() - started
            reply = self._run_here(came, request)
        if reply is None:  # it left again meanwhile
            return None
        if request.trace:
            waited = pb.Hop(node=self._node, tad=tad_to_pb(arriving), event="waited")
            reply.trace.insert(0, waited)
        return reply

    def hop_limit(self, requested: int) -> int:
        """Hops this node forwards a request before answering MOVED.

        A caller may ask for fewer hops than the node allows, never more: every
        hop of a forwarding chain holds a worker on each node it passes, so a
        request carrying a huge limit into a forwarding loop would take every
        worker of the nodes on the loop until the call's deadline.
        """
        if requested <= 0:
            return self._ctx.config.hop_limit
        return min(requested, self._ctx.config.hop_limit)

    def _run_here(self, active: ActiveAtom, request: pb.InvokeRequest) -> pb.InvokeReply | None:
        refused = self._admission.refuse_atom_call(active, request.method)
        if refused is not None:
            return refused
        if active.calls > 1 or active.meta.checkpoint.mode == EVERY_CALL:
            # It waits its turn, or for its checkpoint: not on its connection's reader
            # (for a checkpoint only if the connection carries other calls: callserver).
            yield_reader(shared_only=active.calls <= 1)
        try:
            return self._run_fixed(active, request)
        finally:
            self._admission.release_atom_call(active)

    def _run_idle(self, active: ActiveAtom, request: pb.InvokeRequest) -> pb.InvokeReply | None:
        """A call to an atom active here with no other call, and no checkpoint to wait
        for, run at once: what :meth:`invoke` and :meth:`_run_here` do in this case,
        in fewer steps (one hold of the atom's lock lets it in and fixes the atom). None
        when the call is not such a one (nothing was done)."""
        if active.meta.checkpoint.mode == EVERY_CALL:
            return None
        admission = self._admission
        if not admission.enter_idle(active):
            return None
        started = time.monotonic()
        try:
            fencing = self._fencing
            if not (
                fencing.serving() or fencing.may_serve(f"{request.method} of atom {active.guid}")
            ):
                return pb.InvokeReply(error=fencing.unavailable())
            # (_atom_timeout's work, one call less per call)
            wait = request.timeout if request.timeout > 0 else 30.0
            reply = self._ran(active, request, started, wait - min(DEADLINE_MARGIN_S, wait / 8))
        finally:
            admission.leave_idle(active)
        if active.move_request is not None:
            node, active.move_request = active.move_request, None
            self._move_later(active.guid, node)
        return reply

    def _run_fixed(self, active: ActiveAtom, request: pb.InvokeRequest) -> pb.InvokeReply | None:
        timeout = _atom_timeout(request)
        started = time.monotonic()
        with active.fixed(timeout) as ok:
            if not ok:
                return None  # it left while we waited: forward along the new TAD
            # Fenced while this call waited its turn, or the wait outlasted our lease.
            if not self._fencing.may_serve(
                f"{request.method} of atom {active.guid} after its wait"
            ):
                return pb.InvokeReply(error=self._fencing.unavailable())
            reply = self._ran(active, request, started, timeout)
        if active.move_request is not None:
            node, active.move_request = active.move_request, None
            self._move_later(active.guid, node)
        return reply

    def _ran(
        self, active: ActiveAtom, request: pb.InvokeRequest, started: float, timeout: float
    ) -> pb.InvokeReply:
        """Run the call in ``active``, fixed for it since ``started``: its reply, with the
        checkpoint and placement policies acted on."""
        reply = pb.InvokeReply()
        tad = active.tad
        reply.tad.node, reply.tad.age = tad.node, tad.age
        chain, chain_open = request.chain, request.chain_open
        try:
            reply.result = active.atom.invoke(
                request.method,
                request.args,
                request_id=request.request_id,
                chain=tuple(chain) if chain else (),
                timeout=max(0.001, timeout - (time.monotonic() - started)),
                open_chain=tuple(chain_open) if chain_open else (),
            )
        except HermesError as exc:
            reply.error.CopyFrom(pb_error(exc))
        if request.trace:
            reply.trace.append(pb.Hop(node=self._node, tad=tad_to_pb(tad), event="ran"))
        self._checkpoints.after_call(active, reply)
        metrics.call_ran(reply, started)
        if active.meta.placement == FOLLOW_CALLER:
            self._follow_caller.note_call(active, request.caller_node)
        return reply

    def _forward(self, request: pb.InvokeRequest, tad: TAD) -> pb.InvokeReply:
        """Forward, holding at most an atom's share of the workers for one GUID
        (a slow atom elsewhere must not take this node's workers either)."""
        refused = self._admission.refuse_forward(request.guid, tad, request.method)
        if refused is not None:
            return refused
        try:
            return self._forward_along(request, tad)
        finally:
            self._admission.release_forward(request.guid)

    def _forward_along(self, request: pb.InvokeRequest, tad: TAD) -> pb.InvokeReply:
        # The request goes on as it came, one hop further, carrying the TAD it goes along
        # (a next node whose stash is older waits for the atom, docs/DESIGN.md §4):
        # changed in place and put back after, not copied with its arguments at each hop.
        hops, had_tad = request.hops, request.HasField("tad")
        request.hops = hops + 1
        request.tad.node, request.tad.age = tad.node, tad.age
        metrics.forwarded()
        try:
            reply = self._ctx.invoker.forward(tad.node, request, request.timeout or 30.0)
        except HermesError as exc:
            reply = pb.InvokeReply(error=pb_error(exc), tad=tad_to_pb(tad))
        finally:
            request.hops = hops
            if not had_tad:
                request.ClearField("tad")
        # The common reply repeats the TAD it went along: nothing new to learn.
        learnt = reply.tad
        if learnt.age != tad.age or learnt.node != tad.node:
            newest = tad_from_pb(learnt)
            if newest is not None:
                self._stash.update(request.guid, newest)
        if request.trace:
            reply.trace.insert(0, pb.Hop(node=self._node, tad=tad_to_pb(tad), event="forward"))
        return reply

    def serve_send(self, request: pb.SendRequest) -> pb.SendReply:
        """A message from another process, by gRPC or the call channel: :meth:`send`
        within the node's limit of invocations served at once. A send waits too (for an
        atom that is moving, on the node it is forwarded to); past the limit, those waits
        would take the workers kept free for Status, and the node's watchdog would find
        it stuck and give up its session."""
        refused = self._admission.refuse_invoke()
        if refused is not None:
            return pb.SendReply(error=refused.error)
        try:
            return self.send(request)
        finally:
            self._admission.release_invoke()

    def _deliver(self, active: ActiveAtom, request: pb.SendRequest) -> pb.SendReply | None:
        """Into the mailbox of an atom active here once it is not moving, once per request
        id; a durable atom acknowledges it once it is stored (docs/DESIGN.md §4 "Exactly
        once"). None: it left. It may wait (out a move, for a checkpoint): within the atom's
        share of calls, so many waiting on one atom leave the others their workers."""
        refused = self._admission.refuse_atom_call(active, "a message")
        if refused is not None:
            return pb.SendReply(error=refused.error, tad=refused.tad)
        try:
            if not _settled_here(active):
                return None
            fencing = self._fencing
            if not (fencing.serving() or fencing.may_serve(f"a message to atom {active.guid}")):
                raise UnreachableError(f"node {self._node} may not serve now (its lease)")
            with active.cond:
                if active.state != "active":
                    raise UnreachableError(f"atom {active.guid} left node {self._node}")
                active.atom.deliver(request.code, request.payload, request.request_id)
            if active.meta.checkpoint.mode == EVERY_CALL:
                yield_reader()  # it waits for a checkpoint: not on its connection's reader
                self._checkpoints.after_send(active, request.chain)
        except HermesError as exc:
            return pb.SendReply(error=pb_error(exc), tad=tad_to_pb(active.tad))
        finally:
            self._admission.release_atom_call(active)
        return pb.SendReply(tad=tad_to_pb(active.tad))

    def send(self, request: pb.SendRequest) -> pb.SendReply:
        if self._fencing.fenced:
            return pb.SendReply(error=self._fencing.unavailable())
        active = self._atoms.get(request.guid)
        if active is not None and (delivered := self._deliver(active, request)) is not None:
            return delivered
        tad = self._stash.get(request.guid)
        sent = tad_from_pb(request.tad) if request.hops and request.HasField("tad") else None
        arriving = self._arrivals.expected(request.guid, sent, tad)
        if arriving is not None:
            # On its way here: wait for it rather than send it back (docs/DESIGN.md §4).
            refused = self._admission.refuse_forward(request.guid, arriving, "a message")
            if refused is not None:
                return pb.SendReply(error=refused.error, tad=refused.tad)
            try:
                yield_reader()
                came = self._arrivals.wait(request.guid, arriving, sent, SEND_WAIT_S)
            finally:
                self._admission.release_forward(request.guid)
            if isinstance(came, HermesError):
                return pb.SendReply(error=pb_error(came), tad=tad_to_pb(arriving))
            if came is not None and (delivered := self._deliver(came, request)) is not None:
                return delivered
            tad = self._stash.get(request.guid)
        if tad is None or tad.node == self._node:
            missing = UnreachableError(f"node {self._node} has no record of atom {request.guid}")
            return pb.SendReply(error=pb_error(missing))
        if request.hops >= self.hop_limit(request.hop_limit):
            return pb.SendReply(moved=tad_to_pb(tad), tad=tad_to_pb(tad))
        # Within the atom's share of workers forwarding, as a call (_forward).
        refused = self._admission.refuse_forward(request.guid, tad, "a message")
        if refused is not None:
            return pb.SendReply(error=refused.error, tad=refused.tad)
        yield_reader()
        forwarded = pb.SendRequest()
        forwarded.CopyFrom(request)
        forwarded.hops = request.hops + 1
        forwarded.tad.node, forwarded.tad.age = tad.node, tad.age
        try:
            invoker = self._ctx.invoker
            reply = invoker.nodes.send(invoker.node(tad.node), forwarded, timeout=SEND_WAIT_S)
        except HermesError as exc:
            return pb.SendReply(error=pb_error(exc), tad=tad_to_pb(tad))
        finally:
            self._admission.release_forward(request.guid)
        newest = tad_from_pb(reply.tad)
        if newest is not None:
            self._stash.update(request.guid, newest)
        return reply


def _settled_here(active: ActiveAtom) -> bool:
    """Whether ``active`` is served here once it is not moving (a message waits out a
    move's freeze; docs/DESIGN.md §4)."""
    with active.cond:
        while active.state == "moving":
            active.cond.wait(1.0)
        return active.state == "active"
