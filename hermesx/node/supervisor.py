"""The supervisor: one `hermesx node` process, put together from its parts (DESIGN.md §4, §5, §6).

It hosts active atoms with the runtime, serves invocations, forwards calls
along TADs, keeps its stash, coordinates migrations of its atoms as the
source, installs atoms sent to it (migration, activation, recovery), and
fences itself when its name-service session is in doubt: a node that may
have been declared dead must not serve, or two copies of an atom could run.

Each part lives in its own module of :mod:`hermesx.node`: the catalog of
atoms (``catalog``), dispatch and forwarding (``dispatch``), admission
limits (``admission``), checkpoint, passivation and placement policies
(``checkpoints``, ``passivation``, ``placement``), fencing (``fencing``),
both roles of a move (``migration_source``, ``migration_destination``),
creation (``creation``), the gRPC service (``server``). :class:`Supervisor`
builds them, starts and stops them.

Each registration is an *incarnation* (the session owning ``nodes/<name>``,
DESIGN.md §5). The node names it whenever it takes an atom — staging,
activation, creation — so the storesite records which incarnation holds the
atom; it takes none before it is registered, and a COMMIT that names another
incarnation of this node (it restarted after staging) is refused.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent import futures

import grpc

from hermesx.core.errors import HermesError
from hermesx.node.aborts import UnsentAborts
from hermesx.node.admission import Admission
from hermesx.node.catalog import Catalog
from hermesx.node.checkpoints import Checkpointing
from hermesx.node.config import NodeConfig
from hermesx.node.creation import Creation
from hermesx.node.dispatch import Dispatcher
from hermesx.node.fencing import Fencing
from hermesx.node.host import NodeHost
from hermesx.node.housekeeping import Housekeeping
from hermesx.node.migration_destination import MigrationDestination
from hermesx.node.migration_source import MigrationSource
from hermesx.node.modules import ModuleCache
from hermesx.node.passivation import Passivation
from hermesx.node.placement import FollowCaller
from hermesx.node.server import NodeParts, NodeServicer, serve
from hermesx.node.storage import AtomStoresites
from hermesx.node.testhooks import TestHooks
from hermesx.routing.invoker import Invoker
from hermesx.routing.naming import Naming
from hermesx.routing.stash import Stash
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.wire import ChannelPool, TLSIdentity, set_process_tls
from hermesx.runtime.atom import Runtime

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)


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
            config.zk, config.cluster, session_timeout=config.session_timeout, tls=config.tls_dir
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
        self._server: grpc.Server | None = None
        self._stopping = threading.Event()
        self._background = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="node-bg")
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
        modules = ModuleCache(self.runtime, self.storesites)
        aborts = UnsentAborts(self.storesites)
        hooks = TestHooks(
            enabled=config.test_hooks,
            node=config.name,
            catalog=self.catalog,
            stash=self.stash,
            invoker=self.invoker,
            stopping=self._stopping,
        )
        checkpoints = Checkpointing(config.name, self.storesites, aborts, hooks.pause)
        passivation = Passivation(self.catalog, self.storesites)
        host = NodeHost(
            config.name,
            config.cluster,
            invoker=self.invoker,
            naming=self.naming,
            catalog=self.catalog,
        )
        self.destination = MigrationDestination(
            config.name,
            config.tags,
            catalog=self.catalog,
            fencing=self.fencing,
            modules=modules,
            runtime=self.runtime,
            host=host,
            invoker=self.invoker,
            pause=hooks.pause,
        )
        self.source = MigrationSource(
            config.name,
            catalog=self.catalog,
            naming=self.naming,
            invoker=self.invoker,
            storesites=self.storesites,
            aborts=aborts,
            transfers=self._transfers,
            pause=hooks.pause,
        )
        dispatcher = Dispatcher(
            config.name,
            config.hop_limit,
            catalog=self.catalog,
            stash=self.stash,
            fencing=self.fencing,
            admission=admission,
            invoker=self.invoker,
            checkpoints=checkpoints,
            follow_caller=FollowCaller(config.name, self.naming),
            resolve_staged=self.destination.resolve_staged,
            move_later=self._move_later,
        )
        self.invoker.local_invoke = dispatcher.invoke
        self.invoker.local_send = dispatcher.send
        creation = Creation(
            config.name,
            config.tags,
            catalog=self.catalog,
            fencing=self.fencing,
            modules=modules,
            storesites=self.storesites,
            naming=self.naming,
            runtime=self.runtime,
            host=host,
        )
        self.servicer = NodeServicer(
            NodeParts(
                config=config,
                catalog=self.catalog,
                stash=self.stash,
                fencing=self.fencing,
                admission=admission,
                dispatcher=dispatcher,
                creation=creation,
                checkpoints=checkpoints,
                passivation=passivation,
                source=self.source,
                destination=self.destination,
                hooks=hooks,
            )
        )
        self._housekeeping = Housekeeping(
            catalog=self.catalog,
            fencing=self.fencing,
            aborts=aborts,
            destination=self.destination,
            checkpoints=checkpoints,
            passivation=passivation,
            stopping=self._stopping,
        )

    @property
    def gave_up(self) -> str | None:
        """Why the node stopped serving on its own, if it did."""
        return self.fencing.gave_up

    def start(self) -> str:
        """Serve and register; returns the address we listen on."""
        self._server, self.address = serve(self.servicer, self.config, self.tls)
        self.naming.start()
        self.fencing.start(self.address, self._probe_self)
        self._housekeeping.start()
        log.info("node %s serving on %s (cluster %s)", self.name, self.address, self.config.cluster)
        return self.address

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
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

    def wait(self) -> None:
        self._stopping.wait()

    def _probe_self(self, timeout: float) -> None:
        """Ask our own Status through our gRPC server, as a client would."""
        stub = self.channels.stub(self.address, pbg.SupervisorStub)
        stub.Status(pb.Empty(), timeout=timeout)

    def _move_later(self, guid: str, destination: str) -> None:
        """A move the atom asked for, or its placement decided: made in the background."""
        self._background.submit(self.source.move_quietly, guid, destination)
