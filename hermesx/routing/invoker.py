"""Location-independent invocation, the caller's side (docs/DESIGN.md §4).

An :class:`Invoker` turns "call METHOD on NAME" into RPCs: it resolves the
name to a GUID, starts from the newest TAD its stash holds, follows
``MOVED`` answers, and when the chain is broken (a dead node, a node with no
record, no progress) asks the atom's storesite where the atom is — the single
fallback point, :meth:`Invoker.locate`. Retries are bounded in attempts and
by an overall deadline, and they reuse the call's request id, so a retried
call returns the first reply instead of running twice.

An Invoker made with ``settle_outcome=True`` (every :class:`~hermesx.client.Client`)
goes further: when a call was sent and its outcome is unknown (the node
became unreachable, the deadline passed, or the call ran but its checkpoint
failed), it sends the same request id again until the call's deadline, so
the caller either gets the first outcome or :class:`OutcomeUnknownError`
carrying the request id to retry with later. Errors that say the call was
refused before it ran (no such atom, method or node, bad arguments) and
outcomes the atom recorded (a trap, a method error) are final.

Clients use an Invoker with an in-memory stash; every node uses one with its
persistent stash for atom-to-atom calls, and for ``--via``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from hermesx.core.errors import (
    CallTimeoutError,
    CommunicationError,
    ConfigurationError,
    HermesError,
    OutcomeUnknownError,
    RequestExpiredError,
    UnreachableError,
)
from hermesx.core.replies import RequestIds
from hermesx.core.types import InvokeOutcome
from hermesx.observe import tracing
from hermesx.routing.attempts import Attempts, Call
from hermesx.routing.naming import Member, Naming
from hermesx.routing.peers import INVOKE
from hermesx.routing.stash import Stash
from hermesx.rpc.convert import hop_from_pb
from hermesx.rpc.node_client import NodeClient
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.wire import ChannelPool

__all__ = ["Invoker", "LocalDispatch"]

log = logging.getLogger(__name__)

# Error kinds after which a call that was sent may have run (or not): only
# sending its request id again tells. Every other kind is a final outcome:
# refused before it ran, or the outcome the atom recorded for the id.
OUTCOME_UNKNOWN_KINDS = frozenset(
    {
        "unreachable",
        "timeout",
        "storage",
        "home_moved",
        "migration",
        "communication",
        "no_quorum",
        "outcome_unknown",
        "hermes",
    }
)
# Pauses between resending a request id whose outcome is unknown.
SETTLE_PAUSE_S = (0.05, 0.5)

DEFAULT_HOP_LIMIT = 4
DEFAULT_DEADLINE_S = 30.0
DEFAULT_ATTEMPTS = 60

# A node that calls into itself skips gRPC: (request) -> reply.
LocalDispatch = Callable[[pb.InvokeRequest], pb.InvokeReply]
LocalSend = Callable[[pb.SendRequest], pb.SendReply]
# One RPC of NodeClient sending a request to a node: (client, node, request, timeout) -> reply.
NodeRpc = Callable[[NodeClient, Member, Any, float], Any]


MAX_METHOD_LEN = 256


_T = TypeVar("_T")

# Method names found valid lately: a call to one of them skips the check.
_CHECKED: set[str] = set()
MAX_CHECKED = 4096


def _check_method(method: str) -> None:
    try:
        encoded = method.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"method name {method!r} is not valid text") from None
    if not encoded or len(encoded) > MAX_METHOD_LEN:
        raise ConfigurationError(
            f"method name {method[:40]!r} must be 1 to {MAX_METHOD_LEN} bytes long"
        )
    if len(_CHECKED) >= MAX_CHECKED:
        _CHECKED.clear()
    _CHECKED.add(method)


class Invoker(Attempts):
    """Calls atoms by name or GUID from anywhere in the cluster (see the module's docstring)."""

    def __init__(
        self,
        naming: Naming,
        channels: ChannelPool,
        stash: Stash | None = None,
        *,
        self_node: str | None = None,
        local_invoke: LocalDispatch | None = None,
        local_send: LocalSend | None = None,
        hop_limit: int = DEFAULT_HOP_LIMIT,
        deadline: float = DEFAULT_DEADLINE_S,
        attempts: int = DEFAULT_ATTEMPTS,
        settle_outcome: bool = False,
    ) -> None:
        super().__init__(naming, channels, stash)
        self.self_node = self_node
        self.local_invoke = local_invoke
        self.local_send = local_send
        self.hop_limit = hop_limit
        self.deadline = deadline
        self.attempts = attempts
        self.settle_outcome = settle_outcome
        self.request_ids = RequestIds()

    # ------------------------------------------------------------ invoke

    def invoke(
        self,
        target: str,
        method: str,
        args: bytes,
        *,
        chain: tuple[str, ...] = (),
        request_id: str = "",
        timeout: float | None = None,
        via: str | None = None,
        trace: bool = False,
        open_chain: tuple[str, ...] = (),
    ) -> InvokeOutcome:
        """Run ``method`` on ``target``; a request id of ours is made when none is given."""
        if method not in _CHECKED:
            _check_method(method)
        ours = not request_id
        request_id = request_id or self.request_ids.next()
        deadline = time.monotonic() + (timeout or self.deadline)
        if not self.settle_outcome:
            return self._invoke_once(
                target, method, args, request_id, chain, deadline, via, trace, open_chain=open_chain
            )

        def once(request_id: str, made: list[Call]) -> InvokeOutcome:
            return self._invoke_once(
                target,
                method,
                args,
                request_id,
                chain,
                deadline,
                via,
                trace,
                made,
                open_chain=open_chain,
            )

        unknown = f"{method} may or may not have run"
        return self._resending(target, unknown, request_id, ours, deadline, once)

    def _resending(
        self,
        target: str,
        unknown: str,
        request_id: str,
        ours: bool,
        deadline: float,
        once: Callable[[str, list[Call]], _T],
    ) -> _T:
        """``once`` (one call or message under ``request_id``, its :class:`Call` put in the
        list it is given), sent again under the same id while its outcome is unknown, until
        ``deadline``; then ``outcome_unknown`` carrying the id (docs/DESIGN.md §4)."""
        sends = 0
        pause, most = SETTLE_PAUSE_S
        while True:
            made: list[Call] = []
            try:
                return once(request_id, made)
            except RequestExpiredError as exc:
                sends += made[0].sends if made else 0
                # Refused at its first transmission, an id of ours never ran: our
                # clock is behind the atom's forgotten-before mark. Catch up, send anew.
                if not (ours and sends == 1 and self.request_ids.catch_up(str(exc))):
                    raise
                ours, sends = False, 0
                request_id = self.request_ids.next()
                log.info("%s: our clock is behind; sending it as %s", target, request_id)
                continue
            except HermesError as exc:
                # A copy refused as busy after one whose outcome is unknown (sent before,
                # or sent by an attempt that broke): still unknown.
                was = made[0] if made else None
                unknown_yet = exc.kind in OUTCOME_UNKNOWN_KINDS or (
                    exc.kind == "capacity"
                    and bool(sends or (was and was.sends > 1 and was.last_error))
                )
                sends += made[0].sends if made else 0
                if not unknown_yet or not sends:
                    raise  # final, or never sent: it did not run
                last = exc
            left = deadline - time.monotonic()
            if left <= pause:
                raise OutcomeUnknownError(
                    f"atom {target}: {unknown} (last: {last.kind}: {last})", request_id
                ) from last
            log.debug("%s of %s: outcome unknown (%s); sending it again", request_id, target, last)
            time.sleep(pause)
            pause = min(pause * 2, most)

    def _invoke_once(
        self,
        target: str,
        method: str,
        args: bytes,
        request_id: str,
        chain: tuple[str, ...],
        deadline: float,
        via: str | None,
        trace: bool,
        made: list[Call] | None = None,
        *,
        open_chain: tuple[str, ...] = (),
    ) -> InvokeOutcome:
        guid = self.naming.guid_of(target)
        tad = self.stash.get(guid)
        call = Call(guid, deadline, tad, via, [], trace)
        if made is not None:
            made.append(call)
        request = pb.InvokeRequest(
            guid=guid, method=method, args=args, request_id=request_id, hop_limit=self.hop_limit
        )
        # Only the fields a call sets (a plain call from a client sets none of these).
        if chain:
            request.chain.extend(chain)
        if open_chain:
            request.chain_open.extend(open_chain)
        if trace:
            request.trace = True
        if self.self_node:
            request.caller_node = self.self_node

        def attempt() -> InvokeOutcome:
            node = self._entry_node(call)
            request.hops = 0
            request.timeout = max(call.remaining(), 0.01)
            reply = self._rpc_at(node, call, NodeClient.invoke, request, self.local_invoke)
            if trace:
                call.trace.extend(map(hop_from_pb, reply.trace))
            newest = self._settle(call, node, reply)
            return InvokeOutcome(reply.result, guid, newest, tuple(call.trace))

        # The warm road: the atom's node known, its record kept, a connection to it open.
        if tad is None or via is not None or trace or tracing.ON or tad.node == self.self_node:
            return self._retrying(call, attempt, target)
        lane = self.lane(tad.node)
        if lane is None:
            return self._retrying(call, attempt, target)
        member, connection = lane

        def warm() -> InvokeOutcome:
            call.tried.append(tad)
            call.sends += 1
            left = call.deadline - time.monotonic()
            request.timeout = left = left if left > 0.01 else 0.01
            try:
                body = connection.call(INVOKE, request.SerializeToString(), left)
            except HermesError as err:
                self._failed(call, tad.node, member, err)
            reply = pb.InvokeReply.FromString(body)
            return InvokeOutcome(reply.result, guid, self._settle(call, tad.node, reply))

        return self._retrying(call, attempt, target, first=warm)

    # ------------------------------------------------------------ send

    def send(
        self,
        target: str,
        code: int,
        payload: bytes,
        *,
        sender: str = "",
        seq: int = 0,
        request_id: str = "",
        chain: tuple[str, ...] = (),
        timeout: float | None = None,
    ) -> None:
        """One-way message to ``target``'s interrupt ``code``; returns once it is queued there
        (for a durable atom: stored). A message whose delivery is unknown (a lost reply, a
        node gone, a checkpoint that failed) is sent again under its request id, which the
        atom records: delivered once (docs/DESIGN.md §4 "Exactly once")."""
        guid = self.naming.guid_of(target)
        ours = not request_id
        deadline = time.monotonic() + (timeout or self.deadline)
        request = pb.SendRequest(
            guid=guid,
            code=code,
            payload=payload,
            sender=sender,
            seq=seq,
            hop_limit=self.hop_limit,
            request_id=request_id or self.request_ids.next(),
        )
        if chain:
            request.chain.extend(chain)

        def once(request_id: str, made: list[Call]) -> None:
            call = Call(guid, deadline, self.stash.get(guid), None, [], False)
            made.append(call)
            request.request_id = request_id

            def attempt() -> None:
                node = self._entry_node(call)
                request.hops = 0
                reply = self._rpc_at(node, call, NodeClient.send, request, self.local_send)
                self._settle(call, node, reply)

            self._retrying(call, attempt, target)

        unknown = "a message may or may not have been delivered"
        self._resending(target, unknown, request.request_id, ours, deadline, once)

    # ------------------------------------------------------------ one node

    def _rpc_at(
        self, node: str, call: Call, rpc: NodeRpc, request: Any, local: Callable[[Any], Any] | None
    ) -> Any:
        """Send ``request`` to ``node`` (in-process when it is us); a dead node breaks the chain."""
        if node == self.self_node and local is not None:
            call.sends += 1
            return local(request)
        try:
            member = self.route(node)
        except UnreachableError as exc:
            self._broken(call, node, str(exc))
        call.sends += 1
        try:
            return rpc(self.nodes, member, request, max(call.remaining(), 0.01))
        except HermesError as err:
            self._failed(call, node, member, err)

    def _failed(self, call: Call, node: str, member: Member, error: HermesError) -> NoReturn:
        """A request sent to ``node`` failed with ``error``: a broken chain, or raised."""
        if isinstance(error, UnreachableError):
            # Only a dead connection is dropped: a call past its deadline says
            # nothing of the channel, and closing it would cancel every other
            # call in flight on it. The node may live on at a new address: the
            # next attempt reads its record again.
            self.forget_route(node)
            self.channels.drop(member.address)
            self._broken(call, node, str(error))
        if isinstance(error, CallTimeoutError):
            self._broken(call, node, str(error))
        # Cut short because the node left the cluster (see routing.departures).
        if isinstance(error, CommunicationError) and self.naming.nodes().get(node) is None:
            self.forget_route(node)
            self._broken(call, node, f"node {node} left the cluster: {error}")
        raise error


# With tracing on, a whole call is one span (docs/DESIGN.md §12); off, one flag read.
Invoker.invoke = tracing.traced_invoke(Invoker.invoke)  # type: ignore[method-assign]
