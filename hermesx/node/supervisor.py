"""The supervisor: one `hermesx node` process, put together from its parts.

See docs/DESIGN.md §4, §5, §6.

It hosts active atoms with the runtime, serves invocations, forwards calls
along TADs, keeps its stash, coordinates migrations of its atoms as the
source, installs atoms sent to it (migration, activation, recovery), and
fences itself when its name-service session is in doubt: a node that may
have been declared dead must not serve, or two copies of an atom could run.

Each part lives in its own module of :mod:`hermesx.node`: the catalog of
atoms (``catalog``), dispatch and forwarding (``dispatch``),
admission limits (``admission``), checkpoint, passivation and placement
policies (``checkpoints``, ``passivation``, ``placement``), fencing
(``fencing``), both roles of a move (``migration_source``,
``migration_destination``, ``aborts``), creation (``creation``), building
atoms (``builder``), the atoms' storesites (``storage``), their syscalls
(``host``), test hooks (``testhooks``), the gRPC service (``server``) and the
call channel's listener (``calls``).
:class:`Supervisor` builds them, runs their background duties, starts and
stops them.

Each registration is an *incarnation* (the session owning ``nodes/<name>``,
docs/DESIGN.md §5). The node names it whenever it takes an atom — staging,
activation, creation — so the storesite records which incarnation holds the
atom; it takes none before it is registered, and a COMMIT that names another
incarnation of this node (it restarted after staging) is refused.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent import futures

import grpc

from hermesx.core.addresses import advertised_address, split_host_port
from hermesx.core.errors import HermesError
from hermesx.node.aborts import UnsentAborts
from hermesx.node.admission import Admission
from hermesx.node.budget import AtomBudget
from hermesx.node.builder import AtomBuilder
from hermesx.node.calls import serve_calls
from hermesx.node.catalog import ActiveAtom, Catalog
from hermesx.node.checkpoints import Checkpointing
from hermesx.node.config import NodeConfig
from hermesx.node.context import NodeContext
from hermesx.node.creation import Creation
from hermesx.node.dispatch import Dispatcher
from hermesx.node.drain import Drainer
from hermesx.node.fencing import Fencing
from hermesx.node.host import NodeHost
from hermesx.node.migration_destination import MigrationDestination
from hermesx.node.migration_source import MigrationSource
from hermesx.node.passivation import Passivation
from hermesx.node.server import NodeRoles, NodeServicer, serve
from hermesx.node.storage import AtomStoresites
from hermesx.node.testhooks import TestHooks
from hermesx.observe import atomlog, metrics, tracing
from hermesx.routing.departures import watch_departures
from hermesx.routing.invoker import Invoker
from hermesx.routing.naming import Naming
from hermesx.routing.stash import Stash
from hermesx.rpc.callserver import CallServer, WorkerPool
from hermesx.rpc.node_client import CALL_ADDRESS
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.wire import ChannelPool, TLSIdentity, set_process_tls
from hermesx.runtime.engine import Runtime

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 0.2
# How long past its time a drain on SIGTERM may run before the node stops anyway.
DRAIN_GRACE_S = 5.0


class Supervisor:
    """One node: its parts, wired together; :meth:`start` serves, :meth:`stop` ends it."""

    def __init__(self, config: NodeConfig) -> None:
        config.validate()
        self.config = config
        self.name = config.name
        self.tls = (
            TLSIdentity(config.tls_dir, config.name, config.cluster) if config.tls_dir else None
        )
        set_process_tls(self.tls)
        tracing.configure("hermesx-node", config.name, config.otlp_endpoint)
        atomlog.BOOK.node = config.name
        self.channels = ChannelPool(self.tls)
        data = config.data_dir
        self.stash = Stash(data / "stash" if data is not None else None)
        self.runtime = Runtime(
            node_name=config.name,
            cache_dir=data / "module-cache" if data is not None else None,
            deadline_ms=config.deadline_ms,
            memory_limit_bytes=config.memory_limit_bytes,
            max_payload_bytes=config.max_payload_bytes,
        )
        self.naming = Naming(
            config.zk,
            config.cluster,
            session_timeout=config.session_timeout,
            tls=config.tls_dir,
            cert=config.name,
        )
        # Calls from our atoms to atoms here skip gRPC: the dispatcher is
        # given to the invoker once it exists (it needs the invoker too).
        self.invoker = Invoker(
            self.naming,
            self.channels,
            self.stash,
            self_node=config.name,
            hop_limit=config.hop_limit,
        )
        self.address = ""
        self.call_address = ""  # the call channel's listener, "" when off
        self._server: grpc.Server | None = None
        self._calls: CallServer | None = None
        self._metrics: metrics.MetricsEndpoint | None = None
        self._stopping = threading.Event()
        self._background = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="node-bg")
        # A request run on a call connection's own thread takes a worker's place
        # (docs/DESIGN.md §4.1).
        self._workers = WorkerPool(config.workers, thread_name_prefix="node-rpc")
        self._transfers = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="transfer")

        self.catalog = Catalog(config.name, self.stash)
        admission = Admission(config)
        self.fencing = Fencing(
            config,
            self.naming,
            self.catalog,
            stopping=self._stopping,
            background=self._background,
            invocations=lambda: admission.invokes,
            stop=self.stop,
        )
        self.storesites = AtomStoresites(self.naming, self.invoker)
        hooks = TestHooks(config, self.catalog, self.invoker, stopping=self._stopping)
        # In NodeContext's field order (each of another type: mypy checks the order).
        self.ctx = ctx = NodeContext(
            config,
            self.catalog,
            self.stash,
            self.fencing,
            self.naming,
            self.invoker,
            self.storesites,
            hooks,
            AtomBudget(
                config.name,
                self.catalog,
                atom_memory_bytes=config.memory_limit_bytes,
                max_atoms=config.max_atoms,
                max_memory_bytes=config.max_atom_memory_bytes,
                runtime_atoms=self.runtime.max_atoms,
            ),
        )
        builder = AtomBuilder(self.runtime, NodeHost(ctx), self.storesites)
        self._aborts = UnsentAborts(self.storesites)
        self._checkpoints = Checkpointing(ctx, self._aborts)
        self._passivation = Passivation(ctx)
        self.destination = MigrationDestination(ctx, builder)
        self.source = MigrationSource(ctx, self._aborts, self._transfers)
        self.drainer = Drainer(ctx, self.source)
        self.dispatcher = dispatcher = Dispatcher(
            ctx,
            admission,
            self._checkpoints,
            resolve_staged=self.destination.resolve_staged,
            move_later=self._move_later,
        )
        dispatcher.invoke = tracing.traced_dispatch(config.name, dispatcher.invoke)  # type: ignore[method-assign]
        self.invoker.local_invoke = dispatcher.invoke
        self.invoker.local_send = dispatcher.send
        self.servicer = NodeServicer(
            ctx,
            NodeRoles(
                admission=admission,
                dispatcher=dispatcher,
                creation=Creation(ctx, builder),
                checkpoints=self._checkpoints,
                passivation=self._passivation,
                source=self.source,
                destination=self.destination,
                drainer=self.drainer,
            ),
        )

    @property
    def gave_up(self) -> str | None:
        """Why the node stopped serving on its own, if it did."""
        return self.fencing.gave_up

    def start(self) -> str:
        """Serve and register; returns the address we listen on."""
        # One pool of workers serves both transports, so the node's limits
        # (Admission) and its watchdog's probe see every call.
        self._server, self.address = serve(
            self.servicer, self.ctx.hooks, self.config, self.tls, self._workers
        )
        record: dict[str, str] = {}
        calls = serve_calls(self.dispatcher, self.config, self.tls, self._workers)
        if calls is not None:
            self._calls, bound = calls
            self.call_address = self._reachable_call_address(bound)
            record[CALL_ADDRESS] = self.call_address
        self._metrics = metrics.serve_metrics(
            self.config.metrics_listen, self.address.rpartition(":")[0]
        )
        metrics.watch_node(
            lambda: len(self.catalog.atoms),
            lambda: len(self.catalog.staged),
            lambda: self.fencing.fenced,
        )
        self.naming.start()
        watch_departures(self.naming, self.invoker.channels)
        self.fencing.start(self.address, self._probe_self, record)
        threading.Thread(target=self._housekeeping, name="node-housekeeping", daemon=True).start()
        log.info(
            "node %s serving on %s, calls on %s (cluster %s)",
            self.name,
            self.address,
            self.call_address or "gRPC only",
            self.config.cluster,
        )
        return self.address

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._calls is not None:
            self._calls.stop()
        if self._server is not None:
            self._server.stop(grace=1.0).wait(2.0)
        with contextlib.suppress(HermesError):
            self.naming.close()
        self.catalog.close_active()
        self._background.shutdown(wait=False, cancel_futures=True)
        self._transfers.shutdown(wait=False, cancel_futures=True)
        self.runtime.close()
        self.stash.close()
        self.storesites.close()
        self.channels.close()
        if self._metrics is not None:
            self._metrics.close()
        tracing.shutdown()

    def _reachable_call_address(self, bound: str) -> str:
        """The call channel's address as peers dial it: on the host the node advertises
        (a wildcard listen or ``--advertise``), the port it bound (docs/DESIGN.md §8)."""
        what = f"node {self.name}: the call channel"
        port = split_host_port(bound, what)[1] or 0
        host = split_host_port(self.config.advertise, what)[0] if self.config.advertise else ""
        return advertised_address(bound, port, host, what)

    def drain_and_stop(self, timeout_s: float) -> None:
        """SIGTERM: move every atom away (at most ``timeout_s`` seconds), then stop."""
        if self._stopping.is_set():
            return

        def drain() -> None:
            try:
                reply = self.drainer.drain(timeout_s)
            except HermesError as exc:
                log.warning("node %s: drain failed (%s); stopping anyway", self.name, exc)
                return
            if reply.remaining:
                log.warning(
                    "node %s: stopping with %d atom(s) not moved away after %.0f s of drain; "
                    "they come back from their checkpoints on other nodes",
                    self.name,
                    reply.remaining,
                    timeout_s,
                )

        # A move under way when the time runs out may take a while to end:
        # the process stops at the latest a few seconds after the drain's time.
        draining = threading.Thread(target=drain, name="node-drain", daemon=True)
        draining.start()
        draining.join(timeout_s + DRAIN_GRACE_S)
        if draining.is_alive():
            log.warning(
                "node %s: drain did not end within %.0f s; stopping anyway (atoms left here "
                "come back from their checkpoints on other nodes)",
                self.name,
                timeout_s + DRAIN_GRACE_S,
            )
        self.stop()

    def wait(self) -> None:
        self._stopping.wait()

    def _probe_self(self, timeout: float) -> None:
        """Ask our own Status through our gRPC server, as a client would."""
        stub = self.channels.stub(self.address, pbg.SupervisorStub)
        stub.Status(pb.Empty(), timeout=timeout)

    def _housekeeping(self) -> None:
        """Background duties: unheard aborts, staged copies left alone, time-based atom policies."""
        while not self._stopping.wait(HOUSEKEEPING_INTERVAL_S):
            now = time.monotonic()
            if self._aborts and not self.fencing.fenced:
                self._aborts.retry()
            self.destination.settle_stale(now)
            self._passivation.settle(now)
            for active in list(self.catalog.atoms.values()):
                try:
                    self._atom_duties(active, now)
                except HermesError as exc:
                    log.warning("atom %s: background duty failed: %s", active.guid, exc)

    def _atom_duties(self, active: ActiveAtom, now: float) -> None:
        if self.fencing.fenced or active.state != "active":
            return
        if self._checkpoints.periodic_due(active, now):
            self._checkpoints.checkpoint(active, periodic=True)
        self._checkpoints.forget_idle_base(active, now)
        if self._passivation.idle_due(active, now):
            self._passivation.passivate(active)

    def _move_later(self, guid: str, destination: str) -> None:
        """A move the atom asked for, or its placement decided: made in the background."""
        self._background.submit(self.source.move_quietly, guid, destination)
