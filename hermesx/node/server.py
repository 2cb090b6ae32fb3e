"""The node's gRPC service: thin handlers that hand each RPC to the part of the node for it.

Each handler turns a :class:`HermesError` into the RPC's status
(:func:`~hermesx.rpc.status.abort_with`) or, for Invoke and Send, into the
reply's error. :func:`serve` starts the gRPC server of a node: mutual TLS when
the cluster has it, and as many workers as the configuration says, some of
them kept free of invocations (:mod:`hermesx.node.admission`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc

from hermesx.core.addresses import advertised_address
from hermesx.core.errors import ConfigurationError, HermesError, UnreachableError
from hermesx.core.identity import TAD
from hermesx.node.admission import Admission
from hermesx.node.catalog import ActiveAtom
from hermesx.node.checkpoints import Checkpointing
from hermesx.node.claims import refuse_node_fields, refuse_send_chain
from hermesx.node.config import NodeConfig
from hermesx.node.context import NodeContext
from hermesx.node.creation import Creation
from hermesx.node.dispatch import Dispatcher
from hermesx.node.drain import Drainer
from hermesx.node.migration_destination import MigrationDestination
from hermesx.node.migration_source import MigrationSource
from hermesx.node.passivation import Passivation
from hermesx.node.testhooks import TestHooks
from hermesx.observe import atomlog, tracing
from hermesx.rpc import security
from hermesx.rpc.convert import tad_to_pb
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.status import abort_with
from hermesx.rpc.wire import CHANNEL_OPTIONS, TLSIdentity, add_server_port, server_interceptors

__all__ = ["DEFAULT_DRAIN_S", "NodeRoles", "NodeServicer", "TestHooksServicer", "serve"]

# How long a drain may take unless told (the Drain RPC's, SIGTERM's default).
DEFAULT_DRAIN_S = 30.0


@dataclass(frozen=True, slots=True)
class NodeRoles:
    """The roles of a node its RPCs reach, besides its context."""

    admission: Admission
    dispatcher: Dispatcher
    creation: Creation
    checkpoints: Checkpointing
    passivation: Passivation
    source: MigrationSource
    destination: MigrationDestination
    drainer: Drainer


class NodeServicer(pbg.SupervisorServicer):
    """The Supervisor service of one node."""

    def __init__(self, ctx: NodeContext, roles: NodeRoles) -> None:
        self._ctx = ctx
        self._name = ctx.name
        self._tags = list(ctx.config.tags)
        self._catalog = ctx.catalog
        self._roles = roles
        self._dispatcher = roles.dispatcher

    # ------------------------------------------------------------ calls

    def Invoke(self, request: pb.InvokeRequest, context: grpc.ServicerContext) -> pb.InvokeReply:
        if request.caller_node and (
            refused := refuse_node_fields(request, security.peer_identity(context), self._name)
        ):
            return refused
        return self._dispatcher.serve_invoke(request)

    def Send(self, request: pb.SendRequest, context: grpc.ServicerContext) -> pb.SendReply:
        if request.chain and (
            refused := refuse_send_chain(request, security.peer_identity(context), self._name)
        ):
            return refused
        return self._dispatcher.serve_send(request)

    def Create(self, request: pb.CreateRequest, context: grpc.ServicerContext) -> pb.CreateReply:
        try:
            guid, tad = self._roles.creation.create(request)
        except HermesError as exc:
            abort_with(context, exc)
        return pb.CreateReply(guid=guid, tad=tad_to_pb(tad))

    # ------------------------------------------------------------ where, how

    def Locate(self, request: pb.LocateRequest, context: grpc.ServicerContext) -> pb.LocateReply:
        fencing = self._ctx.fencing
        held = request.guid in self._catalog.atoms
        if held and not fencing.lease_held(f"Locate of {request.guid}"):
            # Neither "here" (we may not serve) nor "not here" (the asker
            # could place a second copy while we still hold this one).
            abort_with(
                context,
                UnreachableError(
                    f"node {self._name} is fenced (its name-service session may have expired); "
                    f"whether it holds atom {request.guid} is not known"
                ),
            )
        reply = pb.LocateReply(active_here=held, incarnation=fencing.incarnation)
        tad = self._ctx.stash.get(request.guid)
        if tad is not None:
            reply.tad.CopyFrom(tad_to_pb(tad))
        return reply

    def Status(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.NodeStatus:
        atoms = self._catalog.atoms
        return pb.NodeStatus(
            name=self._name,
            active_atoms=len(atoms),
            stash_entries=len(self._ctx.stash),
            pid=os.getpid(),
            rss_bytes=_rss_bytes(),
            tags=self._tags,
            atom_calls=sum(a.calls for a in list(atoms.values())),
            invocations=self._dispatcher.invocations,
            fenced=self._ctx.fencing.fenced,
            draining=self._ctx.fencing.draining,
            max_atoms=self._ctx.budget.max_atoms,
            atom_room=self._ctx.budget.room(),
        )

    def AtomLogs(self, request: pb.GuidRequest, context: grpc.ServicerContext) -> pb.AtomLogLines:
        return pb.AtomLogLines(guid=request.guid, lines=atomlog.BOOK.export(request.guid))

    def Drain(self, request: pb.DrainRequest, context: grpc.ServicerContext) -> pb.DrainReply:
        """Out of service: no new atoms, and every atom here moved away (docs/DESIGN.md §5)."""
        try:
            return self._roles.drainer.drain(request.timeout_s or DEFAULT_DRAIN_S)
        except HermesError as exc:
            abort_with(context, exc)

    # ------------------------------------------------------------ checkpoint, passivate

    def Checkpoint(self, request: pb.GuidRequest, context: grpc.ServicerContext) -> pb.TAD:
        with self._waiting(context, f"checkpoint of {request.guid}"):
            checkpoint = self._roles.checkpoints.checkpoint_requested
            return self._on_active(request.guid, context, checkpoint)

    def Passivate(self, request: pb.GuidRequest, context: grpc.ServicerContext) -> pb.TAD:
        with self._waiting(context, f"passivation of {request.guid}"):
            return self._on_active(request.guid, context, self._roles.passivation.passivate)

    @contextlib.contextmanager
    def _waiting(self, context: grpc.ServicerContext, what: str) -> Iterator[None]:
        """Within the node's limit of control requests that wait on an atom."""
        refusal = self._roles.admission.refuse_control(what)
        if refusal is not None:
            abort_with(context, refusal)
        try:
            yield
        finally:
            self._roles.admission.release_control()

    def _on_active(
        self, guid: str, context: grpc.ServicerContext, action: Callable[[ActiveAtom], TAD]
    ) -> pb.TAD:
        """``action`` on atom ``guid``, which must be active here; answers the TAD it leaves."""
        active = self._catalog.atoms.get(guid)
        if active is None or active.state != "active":
            abort_with(context, UnreachableError(f"atom {guid} is not active on node {self._name}"))
        try:
            return tad_to_pb(action(active))
        except HermesError as exc:
            abort_with(context, exc)

    # ------------------------------------------------------------ moves, activation

    def Migrate(self, request: pb.MigrateRequest, context: grpc.ServicerContext) -> pb.MigrateReply:
        with self._waiting(context, f"move of {request.guid}"):
            try:
                return self._roles.source.migrate(request.guid, request.destination)
            except HermesError as exc:
                abort_with(context, exc)

    def StageCopy(self, request: pb.CopyRequest, context: grpc.ServicerContext) -> pb.CopyReply:
        """A move's source stages a copy here (held, not serving)."""
        try:
            return pb.CopyReply(incarnation=self._roles.destination.accept(request, commit=False))
        except HermesError as exc:
            abort_with(context, exc)

    def ActivateCopy(self, request: pb.CopyRequest, context: grpc.ServicerContext) -> pb.CopyReply:
        """A move's source, after COMMIT: the staged copy serves."""
        try:
            return pb.CopyReply(incarnation=self._roles.destination.accept(request, commit=True))
        except HermesError as exc:
            abort_with(context, exc)

    def DiscardCopy(
        self, request: pb.DiscardCopyRequest, context: grpc.ServicerContext
    ) -> pb.Empty:
        """A move's source, after an abort: the staged copy goes."""
        try:
            self._roles.destination.discard(request)
        except HermesError as exc:
            abort_with(context, exc)
        return pb.Empty()

    def Activate(
        self, request: pb.ActivateRequest, context: grpc.ServicerContext
    ) -> pb.ActivateReply:
        """A storesite stages or confirms an atom here (dormant, recovered)."""
        try:
            return self._roles.destination.activate(request)
        except HermesError as exc:
            abort_with(context, exc)


class TestHooksServicer(pbg.NodeTestHooksServicer):
    """The NodeTestHooks service: served only by a node started with test hooks."""

    def __init__(self, hooks: TestHooks) -> None:
        self._hooks = hooks

    def StashPut(self, request: pb.StashPutRequest, context: grpc.ServicerContext) -> pb.Empty:
        """Place a stash entry (relocating the atom if it is here)."""
        try:
            tad = self._hooks.stash_tad(request)
        except HermesError as exc:
            abort_with(context, exc)
        self._hooks.stash_put(request.guid, tad)
        return pb.Empty()

    def TestHook(self, request: pb.TestHookRequest, context: grpc.ServicerContext) -> pb.Empty:
        """Pause at a step of the next move, checkpoint or staged activation."""
        try:
            self._hooks.set_pause(request)
        except HermesError as exc:
            abort_with(context, exc)
        return pb.Empty()


def serve(
    servicer: NodeServicer,
    hooks: TestHooks,
    config: NodeConfig,
    tls: TLSIdentity | None,
    workers: futures.ThreadPoolExecutor,
) -> tuple[grpc.Server, str]:
    """Start the gRPC server of node ``config.name`` on ``workers`` (the node's pool of
    ``config.workers`` threads); returns it and the address it listens on."""
    server = grpc.server(
        workers,
        options=CHANNEL_OPTIONS,
        interceptors=server_interceptors(tls, f"node {config.name}")
        + tracing.server_interceptors(),
    )
    pbg.add_SupervisorServicer_to_server(servicer, server)
    if config.test_hooks:
        pbg.add_NodeTestHooksServicer_to_server(TestHooksServicer(hooks), server)
    port = add_server_port(server, config.listen, tls)
    if port == 0:
        raise UnreachableError(f"node {config.name}: cannot listen on {config.listen}")
    try:
        address = advertised_address(config.listen, port, config.advertise, f"node {config.name}")
    except ConfigurationError:
        server.stop(0)
        raise
    server.start()
    return server, address


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
