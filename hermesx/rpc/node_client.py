"""Typed client of a node's Supervisor service, for every caller (docs/DESIGN.md §4, §5, §6).

Clients, the invoker, nodes (forwarding, moves), storesites (activation,
load, holdings), the CLI and the test harness all call nodes through one
:class:`NodeClient`: one method per RPC, over one
:class:`~hermesx.rpc.wire.ChannelPool`. A failure comes back as a
HermesError naming the node, its address and the RPC (see
:func:`hermesx.rpc.status.error_from_rpc`): the node's own error with its
kind, or :class:`UnreachableError` / :class:`CallTimeoutError` /
:class:`NotAuthorizedError` for the transport. The test-only RPCs
(``NodeTestHooks``) answer only on nodes started with test hooks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hermesx.core.errors import HermesError
from hermesx.core.identity import TAD
from hermesx.observe import tracing
from hermesx.rpc.convert import tad_from_pb, tad_to_pb
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.status import unary_call
from hermesx.rpc.wire import ChannelPool

__all__ = [
    "CALL_ADDRESS",
    "FULL_NODE_LOAD",
    "Holding",
    "Member",
    "NodeAddress",
    "NodeClient",
    "Peer",
    "call_address",
    "placement_load",
]

log = logging.getLogger(__name__)

# The field of a node's name-service record holding its call channel's address
# (docs/DESIGN.md §4.1); a record without it (an older node) is called over gRPC.
CALL_ADDRESS = "call"
# Request kinds of the node's call channel (hermesx.node.calls).
_INVOKE, _SEND = "invoke", "send"

# Time a node has to stage an activation copy: this plus the snapshot's
# transfer at STAGE_BYTES_PER_S.
STAGE_TIMEOUT_S = 5.0
STAGE_BYTES_PER_S = 4 * 2**20
# Added to a full node's load (NodeClient.active_atoms): a storesite places an
# atom there only when no node with room takes it.
FULL_NODE_LOAD = 2**32


def placement_load(status: pb.NodeStatus) -> int:
    """A node's load for placement: its active atoms, past every node with room when
    it is full (its budget, docs/DESIGN.md §3)."""
    full = status.HasField("atom_room") and status.atom_room == 0
    return int(status.active_atoms) + (FULL_NODE_LOAD if full else 0)


class Peer(Protocol):
    """A node to call: its name (for messages) and its address."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...


class Member(Peer, Protocol):
    """A live node as the name service lists it."""

    @property
    def tags(self) -> tuple[str, ...]: ...

    @property
    def incarnation(self) -> str:
        """The session owning the node's registration: a restarted node is a new one."""
        ...

    @property
    def data(self) -> Mapping[str, Any]:
        """More facts the node registered (its pid; ``draining`` while out of service)."""
        ...


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """A node known only by name and address (a :class:`Peer`)."""

    name: str
    address: str


@dataclass(frozen=True, slots=True)
class Holding:
    """What a node knows of an atom (``Locate``).

    ``tad`` is the newest TAD its stash holds (None when it knows nothing),
    ``active_here`` whether the atom runs there, ``incarnation`` the node's
    incarnation ("" before it registered).
    """

    tad: TAD | None
    active_here: bool
    incarnation: str


def _peer(node: Peer) -> str:
    return f"node {node.name} at {node.address}"


def call_address(node: Peer) -> str | None:
    """The call channel's address of ``node`` as its record gives it (None: gRPC only)."""
    data = getattr(node, "data", None)
    found = data.get(CALL_ADDRESS) if data is not None else None
    return found if isinstance(found, str) and found else None


class NodeClient:
    """Calls to nodes' Supervisor service, one method per RPC; thread-safe.

    ``channels`` is the pool to share (a process keeps one); without one the
    client opens its own and :meth:`close` closes it. Invocations and messages
    go over a node's call channel when it advertises one (``lean``).
    ``timeout`` is the
    deadline of calls that name none; ``activate_timeout`` that of a
    storesite's activation.
    """

    def __init__(
        self,
        channels: ChannelPool | None = None,
        *,
        timeout: float = 5.0,
        activate_timeout: float = 30.0,
        lean: bool | None = None,
    ) -> None:
        self._own_channels = channels is None
        # Invocations and messages over the call channel where the node has one
        # (HERMESX_CALLS=grpc: over gRPC, to compare the two).
        self.lean = lean if lean is not None else os.environ.get("HERMESX_CALLS") != "grpc"
        self.channels = channels if channels is not None else ChannelPool()
        self.timeout = timeout
        self.activate_timeout = activate_timeout

    def close(self) -> None:
        if self._own_channels:
            self.channels.close()

    def _stub(self, node: Peer) -> pbg.SupervisorStub:
        return self.channels.stub(node.address, pbg.SupervisorStub)

    # ------------------------------------------------------------ public RPCs

    def invoke(self, node: Peer, request: pb.InvokeRequest, timeout: float) -> pb.InvokeReply:
        """Send one invocation (the caller's hot path: the request is built once per call),
        over the node's call channel when it has one."""
        body, timeout = self._over_calls(node, _INVOKE, request, timeout)
        if body is not None:
            invoked: pb.InvokeReply = pb.InvokeReply.FromString(body)
            return invoked
        stub, what = self._stub(node), f"Invoke({request.guid})"
        reply: pb.InvokeReply = unary_call(
            stub.Invoke, request, timeout, _peer(node), what, metadata=tracing.outgoing()
        )
        return reply

    def send(self, node: Peer, request: pb.SendRequest, timeout: float) -> pb.SendReply:
        body, timeout = self._over_calls(node, _SEND, request, timeout)
        if body is not None:
            sent: pb.SendReply = pb.SendReply.FromString(body)
            return sent
        stub = self._stub(node)
        reply: pb.SendReply = unary_call(
            stub.Send, request, timeout, _peer(node), f"Send({request.guid})"
        )
        return reply

    def _over_calls(
        self, node: Peer, kind: str, request: pb.InvokeRequest | pb.SendRequest, timeout: float
    ) -> tuple[bytes | None, float]:
        """The reply's body of ``request`` sent over ``node``'s call channel, and the time
        left. No body when the node has none, or when no connection to it opens in time
        (then gRPC carries the call, in the time left)."""
        address = call_address(node) if self.lean else None
        if address is None:
            return None, timeout
        started = time.monotonic()
        try:
            connection = self.channels.calls.connection(
                address, f"node {node.name} at {address}", timeout=timeout
            )
        except HermesError as err:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise
            log.info("no call connection to node %s (%s); calling over gRPC", node.name, err)
            return None, left
        left = timeout - (time.monotonic() - started)
        # The trace context rides in the frame's metadata map (none when tracing is off).
        meta = tracing.inject({}) if tracing.ON else None
        return connection.call(kind, request.SerializeToString(), left, meta), left

    def create(
        self, node: Peer, request: pb.CreateRequest, timeout: float = 60.0
    ) -> tuple[str, TAD | None]:
        """Create an atom on ``node``: its GUID and TAD."""
        reply = unary_call(self._stub(node).Create, request, timeout, _peer(node), "Create")
        return reply.guid, tad_from_pb(reply.tad)

    def locate(self, node: Peer, guid: str, timeout: float | None = None) -> Holding:
        request = pb.LocateRequest(guid=guid)
        stub, what = self._stub(node), f"Locate({guid})"
        reply = unary_call(stub.Locate, request, timeout or self.timeout, _peer(node), what)
        return Holding(tad_from_pb(reply.tad), reply.active_here, reply.incarnation)

    def migrate(
        self, node: Peer, guid: str, destination: str, timeout: float = 120.0
    ) -> pb.MigrateReply:
        """Ask ``node``, which runs ``guid``, to move it to ``destination``."""
        request = pb.MigrateRequest(guid=guid, destination=destination)
        stub, what = self._stub(node), f"Migrate({guid})"
        reply: pb.MigrateReply = unary_call(stub.Migrate, request, timeout, _peer(node), what)
        return reply

    def checkpoint(self, node: Peer, guid: str, timeout: float = 60.0) -> TAD | None:
        """Checkpoint ``guid`` now; the TAD the checkpoint was taken at."""
        stub, what = self._stub(node), f"Checkpoint({guid})"
        tad = unary_call(stub.Checkpoint, pb.GuidRequest(guid=guid), timeout, _peer(node), what)
        return tad_from_pb(tad)

    def passivate(self, node: Peer, guid: str, timeout: float = 60.0) -> TAD | None:
        """Make ``guid`` dormant; the TAD it last ran at."""
        stub, what = self._stub(node), f"Passivate({guid})"
        tad = unary_call(stub.Passivate, pb.GuidRequest(guid=guid), timeout, _peer(node), what)
        return tad_from_pb(tad)

    def drain(self, node: Peer, timeout_s: float) -> pb.DrainReply:
        """Take ``node`` out of service and move its atoms away, within ``timeout_s``."""
        stub, request = self._stub(node), pb.DrainRequest(timeout_s=timeout_s)
        reply: pb.DrainReply = unary_call(
            stub.Drain, request, timeout_s + 30.0, _peer(node), "Drain"
        )
        return reply

    def status(self, node: Peer, timeout: float | None = None) -> pb.NodeStatus:
        stub = self._stub(node)
        status: pb.NodeStatus = unary_call(
            stub.Status, pb.Empty(), timeout or self.timeout, _peer(node), "Status"
        )
        return status

    def atom_logs(self, node: Peer, guid: str, timeout: float | None = None) -> bytes:
        """The log lines ``node`` holds of atom ``guid`` (:mod:`hermesx.observe.atomlog`)."""
        stub, what = self._stub(node), f"AtomLogs({guid})"
        reply = unary_call(
            stub.AtomLogs, pb.GuidRequest(guid=guid), timeout or self.timeout, _peer(node), what
        )
        return bytes(reply.lines)

    # ------------------------------------------------------------ a move's destination

    def stage_copy(self, node: Peer, request: pb.CopyRequest, timeout: float = 60.0) -> str:
        """PREPARE: ``node`` restores the copy, held but not serving; the incarnation that did."""
        stub, what = self._stub(node), f"StageCopy({request.guid})"
        reply: pb.CopyReply = unary_call(stub.StageCopy, request, timeout, _peer(node), what)
        return reply.incarnation

    def activate_copy(self, node: Peer, request: pb.CopyRequest, timeout: float = 30.0) -> str:
        """COMMIT: the staged copy (or one restored from the request's snapshot) serves."""
        stub, what = self._stub(node), f"ActivateCopy({request.guid})"
        reply: pb.CopyReply = unary_call(stub.ActivateCopy, request, timeout, _peer(node), what)
        return reply.incarnation

    def discard_copy(self, node: Peer, guid: str, tad: TAD, timeout: float = 5.0) -> None:
        """ABORT: ``node`` drops the copy it staged for ``tad``."""
        request = pb.DiscardCopyRequest(guid=guid, tad=tad_to_pb(tad))
        stub, what = self._stub(node), f"DiscardCopy({guid})"
        unary_call(stub.DiscardCopy, request, timeout, _peer(node), what)

    # ------------------------------------------------------------ a storesite's calls

    def activate(
        self,
        member: Member,
        guid: str,
        tad: TAD,
        snapshot: bytes,
        meta: pb.AtomMeta,
        *,
        checksum: int | None = None,
        stage: bool = False,
        recovery: bool = False,
    ) -> tuple[TAD, str]:
        """Ask ``member`` to run ``guid`` from ``snapshot`` at ``tad`` (``stage``: to stage it).

        The node checks ``checksum`` (of ``snapshot``) before it restores, and
        refuses when it is not the incarnation the name service listed, and a full
        one refuses a dormant atom (not a ``recovery``: docs/DESIGN.md §6).
        Returns the TAD and the incarnation that holds it: the one the node
        reports, else the one the name service listed for it.
        """
        request = pb.ActivateRequest(
            guid=guid,
            tad=tad_to_pb(tad),
            snapshot=snapshot,
            meta=meta,
            checksum=checksum,
            incarnation=member.incarnation,
            stage=stage,
            recovery=recovery,
        )
        # Staging is only a restore: a node that does not answer soon is
        # given up and another one tried (its late copy can never serve).
        timeout = self.activate_timeout
        if stage:
            timeout = min(timeout, STAGE_TIMEOUT_S + len(snapshot) / STAGE_BYTES_PER_S)
        reply = self._activate(member, request, timeout, f"Activate({guid})")
        held = tad_from_pb(reply.tad)
        return (tad if held is None else held), reply.incarnation or member.incarnation

    def confirm(self, member: Member, guid: str, tad: TAD, incarnation: str) -> None:
        """Tell ``member`` that its staged copy of ``guid`` at ``tad`` is recorded: serve it."""
        request = pb.ActivateRequest(
            guid=guid, tad=tad_to_pb(tad), incarnation=incarnation, confirm=True
        )
        self._activate(member, request, self.timeout, f"Activate({guid}, confirm)")

    def _activate(
        self, member: Member, request: pb.ActivateRequest, timeout: float, what: str
    ) -> pb.ActivateReply:
        stub = self._stub(member)
        reply: pb.ActivateReply = unary_call(stub.Activate, request, timeout, _peer(member), what)
        return reply

    def holding(self, member: Peer, guid: str) -> tuple[TAD | None, str]:
        """Whether ``member`` runs ``guid``: its TAD there (None if not active) and the
        node's incarnation. Raises when the node cannot answer."""
        held = self.locate(member, guid)
        return (held.tad if held.active_here else None), held.incarnation

    def active_atoms(self, member: Peer) -> int | None:
        """The node's load for placement: its active-atom count, past every node with
        room when it is full (its budget, docs/DESIGN.md §3), or None when it does not
        answer."""
        try:
            status = self.status(member)
        except HermesError as err:
            log.warning("no load from node %s: %s", member.name, err)
            return None
        return placement_load(status)

    # ------------------------------------------------------------ test hooks

    def stash_put(self, node: Peer, guid: str, tad: TAD, timeout: float = 30.0) -> None:
        """Test hook: set ``node``'s stash entry for ``guid`` (relocating it there if it runs
        on ``node`` and ``tad`` names another node)."""
        request = pb.StashPutRequest(guid=guid, tad=tad_to_pb(tad))
        hooks, what = self._hooks(node), f"StashPut({guid})"
        unary_call(hooks.StashPut, request, timeout, _peer(node), what)

    def pause_at(self, node: Peer, step: str, seconds: float, timeout: float = 5.0) -> None:
        """Test hook: ``node`` pauses ``seconds`` at ``step`` of its next move or checkpoint."""
        request = pb.TestHookRequest(pause_at=step, seconds=seconds)
        hooks, what = self._hooks(node), f"TestHook({step})"
        unary_call(hooks.TestHook, request, timeout, _peer(node), what)

    def _hooks(self, node: Peer) -> pbg.NodeTestHooksStub:
        return self.channels.stub(node.address, pbg.NodeTestHooksStub)
