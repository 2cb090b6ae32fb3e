"""The storesite's calls to supervisors: activate, ask for load or a holding (DESIGN.md §4, §5, §6).

Channels are kept per node address. Failures come back as HermesErrors:
the node's own error (details ``"<kind>: <message>"``) or
:class:`UnreachableError` / :class:`CallTimeoutError` naming the node.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import grpc

from hermesx.core.errors import HermesError
from hermesx.core.identity import TAD
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.status import error_from_rpc
from hermesx.rpc.wire import CHANNEL_OPTIONS as WIRE_CHANNEL_OPTIONS
from hermesx.rpc.wire import open_channel

__all__ = ["CHANNEL_OPTIONS", "Member", "SupervisorLink"]

log = logging.getLogger(__name__)

# Time a node has to stage an activation copy: this plus the snapshot's
# transfer at STAGE_BYTES_PER_S.
STAGE_TIMEOUT_S = 5.0
STAGE_BYTES_PER_S = 4 * 2**20

# One set of channel options for every process (message sizes, reconnects).
CHANNEL_OPTIONS = WIRE_CHANNEL_OPTIONS


class Member(Protocol):
    """A live node as the name service lists it."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def tags(self) -> tuple[str, ...]: ...

    @property
    def incarnation(self) -> str:
        """The session owning the node's registration: a restarted node is a new one."""
        ...


class SupervisorLink:
    """Stubs for the nodes of a cluster, one channel per address."""

    def __init__(self, *, timeout: float = 5.0, activate_timeout: float = 30.0) -> None:
        self._timeout = timeout
        self._activate_timeout = activate_timeout
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[grpc.Channel, pbg.SupervisorStub]] = {}

    def _stub(self, address: str) -> pbg.SupervisorStub:
        with self._lock:
            entry = self._channels.get(address)
            if entry is None:
                channel = open_channel(address, CHANNEL_OPTIONS)
                entry = (channel, pbg.SupervisorStub(channel))
                self._channels[address] = entry
            return entry[1]

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
    ) -> tuple[TAD, str]:
        """Ask ``member`` to run ``guid`` from ``snapshot`` at ``tad`` (``stage``: to stage it).

        The node checks ``checksum`` (of ``snapshot``) before it restores, and
        refuses when it is not the incarnation the name service listed.
        Returns the TAD and the incarnation that holds it: the one the node
        reports, else the one the name service listed for it.
        """
        request = pb.ActivateRequest(
            guid=guid,
            tad=pb.TAD(node=tad.node, age=tad.age),
            snapshot=snapshot,
            meta=meta,
            checksum=checksum,
            incarnation=member.incarnation,
            stage=stage,
        )
        # Staging is only a restore: a node that does not answer soon is
        # given up and another one tried (its late copy can never serve).
        timeout = self._activate_timeout
        if stage:
            timeout = min(timeout, STAGE_TIMEOUT_S + len(snapshot) / STAGE_BYTES_PER_S)
        try:
            reply = self._stub(member.address).Activate(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(
                exc, f"node {member.name} at {member.address}", f"Activate({guid})"
            ) from exc
        incarnation = reply.incarnation or member.incarnation
        if reply.HasField("tad") and reply.tad.node:
            return TAD(reply.tad.node, reply.tad.age), incarnation
        return tad, incarnation

    def confirm(self, member: Member, guid: str, tad: TAD, incarnation: str) -> None:
        """Tell ``member`` that its staged copy of ``guid`` at ``tad`` is recorded: serve it."""
        request = pb.ActivateRequest(
            guid=guid,
            tad=pb.TAD(node=tad.node, age=tad.age),
            incarnation=incarnation,
            confirm=True,
        )
        try:
            self._stub(member.address).Activate(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(
                exc, f"node {member.name} at {member.address}", f"Activate({guid}, confirm)"
            ) from exc

    def holding(self, member: Member, guid: str) -> tuple[TAD | None, str]:
        """Whether ``member`` runs ``guid``: its TAD there (None if not active) and the
        node's incarnation. Raises when the node cannot answer."""
        try:
            reply = self._stub(member.address).Locate(
                pb.LocateRequest(guid=guid), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(
                exc, f"node {member.name} at {member.address}", f"Locate({guid})"
            ) from exc
        held = TAD(reply.tad.node, reply.tad.age) if reply.active_here else None
        return held, reply.incarnation

    def active_atoms(self, member: Member) -> int | None:
        """The node's active-atom count, or None when it does not answer."""
        try:
            status = self._stub(member.address).Status(pb.Empty(), timeout=self._timeout)
        except grpc.RpcError as exc:
            err: HermesError = error_from_rpc(
                exc, f"node {member.name} at {member.address}", "Status"
            )
            log.warning("no load from node %s: %s", member.name, err)
            return None
        return int(status.active_atoms)

    def close(self) -> None:
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
        for channel, _ in channels:
            channel.close()
