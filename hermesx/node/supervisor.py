"""The supervisor: one `hermesx node` process (DESIGN.md §4, §5, §6).

It hosts active atoms with the runtime, serves invocations, forwards calls
along TADs, keeps its stash, coordinates migrations of its atoms as the
source, installs atoms sent to it (migration, activation, recovery), and
fences itself when its name-service session is in doubt: a node that may
have been declared dead must not serve, or two copies of an atom could run.

Each registration is an *incarnation* (the session owning ``nodes/<name>``,
DESIGN.md §5). The node names it whenever it takes an atom — staging,
activation, creation — so the storesite records which incarnation holds the
atom; it takes none before it is registered, and a COMMIT that names another
incarnation of this node (it restarted after staging) is refused.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pathlib
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from hermesx.core.errors import (
    CapacityError,
    ConfigurationError,
    HermesError,
    HomeMovedError,
    MigrationError,
    NameNotFoundError,
    NameTakenError,
    NotActiveHereError,
    StorageError,
    UnreachableError,
)
from hermesx.core.identity import GUID, TAD, validate_name
from hermesx.core.replies import DEFAULT_REPLY_ENTRIES, ReplyWindow
from hermesx.core.snapshot import snapshot_checksum, verify_checksum, yield_gil
from hermesx.node.lease import SessionLease
from hermesx.node.liveness import ServeWatchdog
from hermesx.routing.invoker import Invoker
from hermesx.routing.naming import Naming
from hermesx.routing.stash import Stash
from hermesx.rpc.atom_meta import check_atom_meta, tags_refusal
from hermesx.rpc.convert import tad_from_pb, tad_to_pb
from hermesx.rpc.node_client import Peer
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.status import abort_with, error_from_rpc, pb_error
from hermesx.rpc.wire import (
    CHANNEL_OPTIONS,
    ChannelPool,
    TLSIdentity,
    add_server_port,
    server_interceptors,
    set_process_tls,
)
from hermesx.runtime.atom import Atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import CallContext
from hermesx.runtime.modules import LoadedModule

__all__ = ["NodeConfig", "Supervisor"]

log = logging.getLogger(__name__)

# Placement policy "follow-caller": after every FOLLOW_WINDOW calls, move to
# the node that made at least FOLLOW_SHARE of them (calls from atoms there).
FOLLOW_CALLER = "follow-caller"
FOLLOW_WINDOW = 20
FOLLOW_SHARE = 0.75
PLACEMENTS = ("", FOLLOW_CALLER)
# How much earlier than its caller a call's waits in an atom end (at most).
DEADLINE_MARGIN_S = 0.5
# Calls one atom may have in flight while the node is under pressure.
PRESSED_CALLS_PER_ATOM = 2

EVERY_CALL = pb.CheckpointPolicy.EVERY_CALL
PERIODIC = pb.CheckpointPolicy.PERIODIC


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    listen: str = "127.0.0.1:0"
    zk: str = "127.0.0.1:2181"
    cluster: str = "default"
    tags: tuple[str, ...] = ()
    data_dir: pathlib.Path | None = None
    hop_limit: int = 4
    session_timeout: float = 4.0
    deadline_ms: int = 5000
    memory_limit_bytes: int = 64 * 2**20
    max_payload_bytes: int = 4 * 2**20
    test_hooks: bool = False
    workers: int = 64
    # Invocations one atom may have waiting for it or running in it at once
    # (0: a quarter of the workers), so one slow atom cannot take every worker.
    max_calls_per_atom: int = 0
    # A node that cannot answer its own Status for this long gives up its
    # name-service session (0: three session timeouts, at least 10 s).
    unresponsive_limit_s: float = 0.0
    # Cluster certificate directory: mutual TLS and the name-service secret.
    tls_dir: pathlib.Path | None = None


@dataclass(eq=False)
class ActiveAtom:
    """An atom running here, with what the supervisor tracks about it."""

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


@dataclass(eq=False)
class StagedCopy:
    """A copy sent here by a move's source, waiting for that move's COMMIT."""

    tad: TAD
    meta: pb.AtomMeta
    atom: Atom
    since: float = field(default_factory=time.monotonic)


# A staged copy nobody activated or discarded for this long is checked
# against the storesite (its source may have died after COMMIT).
STAGED_RESOLVE_AFTER_S = 5.0


# A state larger than two of these goes to the storesite in pieces of this size.
CHECKPOINT_PIECE_BYTES = 1 << 20
_PIECES: dict[str, type[pb.CheckpointPiece] | type[pb.PassivatedPiece]] = {
    "PutCheckpoint": pb.CheckpointPiece,
    "Passivated": pb.PassivatedPiece,
}


def transfer_timeout(size: int) -> float:
    """Seconds to allow for sending a state of ``size`` bytes to a storesite: a
    64 MiB state (an atom at the default cap) written durably on a busy disk
    takes several seconds."""
    return 10.0 + size / (4 * 2**20)


class NodeHost:
    """The AtomHost of this node's atoms: their syscalls that leave the atom."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        self._seq_lock = threading.Lock()
        self._send_seq: dict[tuple[str, str], int] = {}
        # One lock per sender so its messages leave in order (FIFO per pair).
        self._send_locks: dict[str, threading.Lock] = {}

    @property
    def node_name(self) -> str:
        return self._sup.config.name

    def invoke(self, ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        outcome = self._sup.invoker.invoke(
            target, method, args, chain=ctx.chain, timeout=ctx.timeout, open_chain=ctx.open_chain
        )
        return outcome.result

    def send(self, ctx: CallContext, target: str, code: int, payload: bytes) -> None:
        with self._seq_lock:
            lock = self._send_locks.setdefault(ctx.caller_guid, threading.Lock())
        with lock:
            key = (ctx.caller_guid, target)
            seq = self._send_seq.get(key, 0) + 1
            self._send_seq[key] = seq
            self._sup.invoker.send(
                target, code, payload, sender=ctx.caller_guid, seq=seq, timeout=ctx.timeout
            )

    def lookup(self, ctx: CallContext, mode: str, pattern: str, scope: str | None) -> list[str]:
        naming = self._sup.naming
        if mode == "exact":
            if scope is None:
                try:
                    return [naming.resolve(pattern)]
                except NameNotFoundError:
                    return []
            return sorted(naming.aliases(scope).get(pattern, []))
        return naming.lookup(pattern, scope=scope, all=(mode == "all"))

    def alias_add(self, ctx: CallContext, scope: str, alias: str) -> None:
        self._sup.naming.alias_add(scope, alias, ctx.caller_guid)

    def alias_remove(self, ctx: CallContext, scope: str, alias: str) -> None:
        self._sup.naming.alias_remove(scope, alias, ctx.caller_guid)

    def move_to(self, ctx: CallContext, node: str) -> None:
        """Refuse at once what the move would refuse later, so the atom hears it (ABI.md)."""
        validate_name(node, "node name")
        active = self._sup.atoms.get(ctx.caller_guid)
        if active is None or node == self._sup.name:
            return
        members = self._sup.naming.nodes()
        if node not in members:
            raise NameNotFoundError(
                f"node {node!r} is not a live member of cluster {self._sup.config.cluster}"
            )
        refusal = tags_refusal(ctx.caller_guid, node, active.meta.tags, members[node].tags)
        if refusal:
            raise MigrationError(refusal)
        active.move_request = node

    def checkpoint(self, ctx: CallContext) -> None:
        active = self._sup.atoms.get(ctx.caller_guid)
        if active is not None:
            active.checkpoint_request = True


class Supervisor(pbg.SupervisorServicer, pbg.NodeTestHooksServicer):
    def __init__(self, config: NodeConfig) -> None:
        validate_name(config.name, "node name")
        if config.workers < 2:
            raise ConfigurationError(f"workers must be at least 2, not {config.workers}")
        if config.max_calls_per_atom < 0:
            raise ConfigurationError(
                f"max_calls_per_atom must be 0 (default) or more, not {config.max_calls_per_atom}"
            )
        if not 0 <= config.unresponsive_limit_s < float("inf"):
            raise ConfigurationError(
                "unresponsive_limit_s must be 0 (default) or a positive number of seconds, "
                f"not {config.unresponsive_limit_s}"
            )
        self.config = config
        self.name = config.name
        self.atoms: dict[str, ActiveAtom] = {}
        self._atoms_lock = threading.Lock()
        self._staged: dict[str, StagedCopy] = {}
        self._staged_lock = threading.Lock()
        # Aborts the storesite did not hear (it was down): retried until it does.
        self._unsent_aborts: dict[str, int] = {}
        # Test hooks: step of the next migration -> seconds to pause there.
        self._pauses: dict[str, float] = {}
        self._modules: dict[str, LoadedModule] = {}
        self._module_lock = threading.Lock()
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
        self.host = NodeHost(self)
        self.invoker = Invoker(
            self.naming,
            self.channels,
            self.stash,
            self_node=config.name,
            local_invoke=self.dispatch_invoke,
            local_send=self.dispatch_send,
            hop_limit=config.hop_limit,
        )
        self.address = ""
        workers = config.workers
        # Workers kept free of invocations, for Status and the other control RPCs.
        self._reserved_workers = min(workers - 1, max(4, workers // 8))
        self._max_invokes = workers - self._reserved_workers
        self._max_calls_per_atom = config.max_calls_per_atom or max(1, workers // 4)
        # Past this many invocations the node is under pressure: an atom that
        # already has PRESSED_CALLS_PER_ATOM calls gets no more, so several slow
        # atoms together (a tenant of them) cannot take the workers of the rest.
        self._pressure_invokes = max(1, self._max_invokes * 3 // 4)
        self._invokes = 0  # Invoke RPCs being served
        self._forwarding: collections.Counter[str] = collections.Counter()  # GUID -> calls
        self._invokes_lock = threading.Lock()
        # This registration's incarnation; "" while not registered (starting,
        # or after a lost session until we register again).
        self.incarnation = ""
        # Set while we may serve: our name-service session is not in doubt.
        self._serving = threading.Event()
        self._serving.set()
        self._stopping = threading.Event()
        # Serving also needs a recent answered name-service round trip: a node
        # resumed after a pause past its session timeout must not serve.
        self._lease = SessionLease(
            self.naming.round_trip,
            lambda: self.incarnation,
            config.session_timeout,
            stopping=self._stopping,
        )
        self._server: grpc.Server | None = None
        # Why the node stopped serving on its own, if it did (see _give_up_session).
        self.gave_up: str | None = None
        self._background = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="node-bg")
        self._transfers = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="transfer")

    # ------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Serve and register; returns the address we listen on."""
        self._server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.config.workers, thread_name_prefix="node-rpc"
            ),
            options=CHANNEL_OPTIONS,
            interceptors=server_interceptors(self.tls, f"node {self.name}"),
        )
        pbg.add_SupervisorServicer_to_server(self, self._server)
        if self.config.test_hooks:
            pbg.add_NodeTestHooksServicer_to_server(self, self._server)
        host, _, _ = self.config.listen.rpartition(":")
        port = add_server_port(self._server, self.config.listen, self.tls)
        if port == 0:
            raise UnreachableError(f"node {self.name}: cannot listen on {self.config.listen}")
        self.address = f"{host}:{port}"
        self._server.start()
        self.naming.start()
        self.naming.add_state_listener(self._on_session_state)
        self._register()
        self._lease.start()
        threading.Thread(target=self._housekeeping, name="node-housekeeping", daemon=True).start()
        limit = self.config.unresponsive_limit_s or max(10.0, 3 * self.config.session_timeout)
        self._watchdog = ServeWatchdog(
            self._probe_self, limit, self._give_up_session, stopping=self._stopping
        )
        self._watchdog.start()
        log.info("node %s serving on %s (cluster %s)", self.name, self.address, self.config.cluster)
        return self.address

    def _register(self) -> None:
        # A restarted node finds its previous registration alive until that
        # session expires (the old process may have been killed): wait it out.
        deadline = time.monotonic() + 2 * self.config.session_timeout + 5.0
        while True:
            try:
                incarnation = self.naming.register_node(
                    self.name, self.address, self.config.tags, {"pid": os.getpid()}
                )
                if incarnation != self.incarnation:
                    log.info("node %s registered as incarnation %s", self.name, incarnation)
                self.incarnation = incarnation
                return
            except NameTakenError:
                if time.monotonic() > deadline or self._stopping.is_set():
                    raise
                log.info("node %s: waiting for the previous registration to expire", self.name)
                time.sleep(0.25)

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._server is not None:
            self._server.stop(grace=1.0).wait(2.0)
        with contextlib.suppress(HermesError):
            self.naming.close()
        for active in list(self.atoms.values()):
            active.atom.close()
        self.atoms.clear()
        self._background.shutdown(wait=False, cancel_futures=True)
        self._transfers.shutdown(wait=False, cancel_futures=True)
        self.runtime.close()
        self.stash.close()
        self.channels.close()

    def wait(self) -> None:
        self._stopping.wait()

    # ------------------------------------------------------------ fencing

    @property
    def fenced(self) -> bool:
        """True while we must not serve: the session is in doubt or our lease on it ran out."""
        return not self._serving.is_set() or not self._lease.valid()

    @fenced.setter
    def fenced(self, value: bool) -> None:
        if value:
            self._serving.clear()
        else:
            self._serving.set()

    def _lease_held(self, what: str) -> bool:
        if self._lease.valid():
            return True
        log.warning(
            "node %s: serving lease ran out (no name-service round trip answered lately); "
            "refused %s",
            self.name,
            what,
        )
        return False

    def _check_lease(self, what: str) -> None:
        """Before an atom starts serving here: raise unless our lease on the session holds."""
        if not self._lease_held(what):
            raise UnreachableError(
                f"node {self.name} is fenced (its name-service session may have expired); {what}"
            )

    def _wait_serving(self, what: str) -> None:
        """A suspension usually ends within a ZooKeeper failover: wait for it, briefly."""
        if not self._serving.wait(self.config.session_timeout):
            raise UnreachableError(f"node {self.name} is fenced; {what}")

    def _on_session_state(self, state: str) -> None:
        if state == "suspended":
            # We may be partitioned: stop serving now. Our atoms are dropped
            # only when the session is reported lost: without a quorum no
            # session expires, and then nobody recovers them elsewhere.
            self.fenced = True
            log.warning("node %s: name-service connection suspended; not serving", self.name)
        elif state == "lost":
            # Atoms taken from now on would be recorded at a dead incarnation.
            self.incarnation = ""
            self._fence_drop("name-service session lost")
        elif state == "connected":
            if not self._serving.is_set():
                log.info("node %s: name-service session back; serving again", self.name)
            self.fenced = False
            self._background.submit(self._reregister)

    def _probe_self(self, timeout: float) -> None:
        """Ask our own Status through our gRPC server, as a client would."""
        stub = self.channels.stub(self.address, pbg.SupervisorStub)
        stub.Status(pb.Empty(), timeout=timeout)

    def _give_up_session(self, why: str) -> None:
        """We cannot serve: let the cluster declare us dead so our atoms are recovered elsewhere.

        Holding the session would keep every atom here unreachable, and no
        storesite recovers an atom from a node whose session is alive.
        """
        log.error(
            "node %s gives up its name-service session and stops: %s "
            "(%d invocations in atoms, %d workers)",
            self.name,
            why,
            self._invokes,
            self.config.workers,
        )
        self.gave_up = why
        self._fence_drop(why)
        self.stop()

    def _reregister(self) -> None:
        try:
            if not self.incarnation or self.name not in self.naming.nodes():
                self._register()
        except HermesError as exc:
            log.warning("node %s: could not register again: %s", self.name, exc)

    def _fence_drop(self, why: str) -> None:
        self.fenced = True
        for guid in list(self._staged):
            self._discard_staged(guid)
        with self._atoms_lock:
            dropped = list(self.atoms.values())
            self.atoms.clear()
        for active in dropped:
            with active.cond:
                active.state = "gone"
                active.cond.notify_all()
            active.atom.close()
        if dropped:
            log.warning("node %s fenced (%s): dropped %d atoms", self.name, why, len(dropped))

    def _housekeeping(self) -> None:
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            if self._unsent_aborts and not self.fenced:
                self._retry_aborts()
            for guid, staged in list(self._staged.items()):
                if now - staged.since > STAGED_RESOLVE_AFTER_S and not self.fenced:
                    self.resolve_staged(guid)
            for active in list(self.atoms.values()):
                try:
                    self._periodic_duties(active, now)
                except HermesError as exc:
                    log.warning("atom %s: background duty failed: %s", active.guid, exc)

    def _periodic_duties(self, active: ActiveAtom, now: float) -> None:
        if self.fenced or active.state != "active":
            return
        policy = active.meta.checkpoint
        if (
            policy.mode == PERIODIC
            and policy.every_seconds > 0
            and active.atom.generation != active.checkpointed_generation
            and now - active.last_checkpoint >= policy.every_seconds
        ):
            self.checkpoint_atom(active, periodic=True)
        idle = active.meta.idle_passivate_seconds
        if idle > 0 and active.inflight == 0 and now - active.last_used >= idle:
            self.passivate_atom(active)

    # ------------------------------------------------------------ helpers

    def _taking_incarnation(self, what: str) -> str:
        """Our incarnation, to name when taking an atom; refuses while we are not registered."""
        self._wait_serving(what)
        incarnation = self.incarnation
        if not incarnation:
            raise UnreachableError(f"node {self.name} is not registered yet; {what}")
        return incarnation

    def _still_incarnation(self, incarnation: str, what: str) -> None:
        """After taking an atom: our session must not have been lost meanwhile."""
        if self.incarnation != incarnation:
            raise UnreachableError(
                f"node {self.name} lost its name-service session "
                f"(incarnation {incarnation}); {what}"
            )

    def _unavailable(self) -> pb.Error:
        return pb_error(
            UnreachableError(f"node {self.name} is fenced (its name-service session is in doubt)")
        )

    def storesite_stub(self, guid: str) -> tuple[str, pbg.StoresiteStub]:
        sid, address = self.invoker.storesite_address(guid)
        return sid, self.channels.stub(address, pbg.StoresiteStub)

    def _storesite_call(
        self, guid: str, method: str, request: object, timeout: float = 10.0
    ) -> object:
        """One RPC at the atom's storesite, following its home if that moved meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            sid, stub = self.storesite_stub(guid)
            try:
                return getattr(stub, method)(request, timeout=max(deadline - time.monotonic(), 0.1))
            except grpc.RpcError as exc:
                err = error_from_rpc(exc, f"storesite {sid} ({method} of atom {guid})")
                if not isinstance(err, HomeMovedError) or not self._await_new_home(
                    guid, sid, deadline
                ):
                    raise err from exc
                log.info("atom %s: its home moved from storesite %s; following it", guid, sid)

    def _await_new_home(self, guid: str, old: str, deadline: float) -> bool:
        """Wait (bounded) until the name service names a home other than ``old``.

        The old home records the move in the name service before it refuses
        the atom's records, so the new home is there already; only our
        cached view may lag by a watch notification.
        """
        while True:
            home = self.naming.home(guid) or GUID.parse(guid).home
            if home != old:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def module(self, module_hash: str, guid: str, wasm: bytes = b"") -> LoadedModule:
        """The compiled module with this hash, fetched from the storesite if we lack it."""
        loaded = self._modules.get(module_hash)
        if loaded is not None:
            return loaded
        with self._module_lock:
            loaded = self._modules.get(module_hash)
            if loaded is not None:
                return loaded
            if not wasm:
                reply = self._storesite_call(guid, "GetModule", pb.ModuleHash(hash=module_hash))
                assert isinstance(reply, pb.ModuleBytes)
                wasm = reply.module
            loaded = self.runtime.load(wasm)
            if loaded.hash != module_hash:
                raise StorageError(
                    f"module of atom {guid}: expected hash {module_hash}, got {loaded.hash}"
                )
            self._modules[module_hash] = loaded
            return loaded

    def install(self, guid: str, atom: Atom, meta: pb.AtomMeta, tad: TAD) -> ActiveAtom:
        active = ActiveAtom(guid, atom, meta, tad, checkpointed_generation=atom.generation)
        with self._atoms_lock:
            old = self.atoms.get(guid)
            if old is not None:
                if old.tad.age >= tad.age:
                    atom.close()
                    raise MigrationError(
                        f"atom {guid} is already active on {self.name} at age {old.tad.age}"
                    )
                with old.cond:
                    old.state = "gone"
                    old.cond.notify_all()
                old.atom.close()
            self.atoms[guid] = active
        self.stash.update(guid, tad)
        return active

    def drop(self, active: ActiveAtom, forward_to: TAD | None) -> None:
        with self._atoms_lock:
            if self.atoms.get(active.guid) is active:
                del self.atoms[active.guid]
        if forward_to is not None:
            self.stash.update(active.guid, forward_to)
        with active.cond:
            active.state = "gone"
            active.cond.notify_all()
        active.atom.close()

    # ------------------------------------------------------------ invocation

    def dispatch_invoke(self, request: pb.InvokeRequest) -> pb.InvokeReply:
        if not self._serving.is_set() or not self._lease_held(
            f"{request.method} of atom {request.guid}"
        ):
            return pb.InvokeReply(error=self._unavailable())
        guid = request.guid
        active = self.atoms.get(guid)
        if active is not None:
            reply = self._run_here(active, request)
            if reply is not None:
                return reply
        tad = self.stash.get(guid)
        if tad is not None and tad.node != self.name:
            limit = self._hop_limit(request.hop_limit)
            if request.hops < limit:
                return self._forward_bounded(request, tad)
            reply = pb.InvokeReply(moved=tad_to_pb(tad), tad=tad_to_pb(tad))
            if request.trace:
                reply.trace.append(pb.Hop(node=self.name, tad=tad_to_pb(tad), event="moved"))
            return reply
        if guid in self._staged and self.resolve_staged(guid):
            active = self.atoms.get(guid)
            if active is not None:
                settled = self._run_here(active, request)
                if settled is not None:
                    return settled
        reply = pb.InvokeReply(
            error=pb_error(UnreachableError(f"node {self.name} has no record of atom {guid}"))
        )
        if tad is not None:
            reply.tad.CopyFrom(tad_to_pb(tad))
        return reply

    def _hop_limit(self, requested: int) -> int:
        """Hops this node forwards a request before answering MOVED.

        A caller may ask for fewer hops than the node allows, never more: every
        hop of a forwarding chain holds a worker on each node it passes, so a
        request carrying a huge limit into a forwarding loop would take every
        worker of the nodes on the loop until the call's deadline.
        """
        if requested <= 0:
            return self.config.hop_limit
        return min(requested, self.config.hop_limit)

    def _run_here(self, active: ActiveAtom, request: pb.InvokeRequest) -> pb.InvokeReply | None:
        limit = self._max_calls_per_atom
        if self._invokes >= self._pressure_invokes:
            limit = min(limit, PRESSED_CALLS_PER_ATOM)
        with active.cond:
            if active.calls >= limit:
                pressed = " while the node is busy" if limit < self._max_calls_per_atom else ""
                return pb.InvokeReply(
                    error=pb_error(
                        CapacityError(
                            f"atom {active.guid} on node {self.name} already has "
                            f"{active.calls} calls waiting or running (limit {limit}{pressed}); "
                            f"{request.method} refused, try later"
                        )
                    ),
                    tad=tad_to_pb(active.tad),
                )
            active.calls += 1
        try:
            return self._run_fixed(active, request)
        finally:
            with active.cond:
                active.calls -= 1

    def _run_fixed(self, active: ActiveAtom, request: pb.InvokeRequest) -> pb.InvokeReply | None:
        wait = request.timeout if request.timeout > 0 else 30.0
        # The atom's waits end a little before the caller's, so the caller
        # hears why its call ended instead of only that its deadline passed.
        timeout = wait - min(DEADLINE_MARGIN_S, wait / 8)
        started = time.monotonic()
        with active.fixed(timeout) as ok:
            if not ok:
                return None  # it left while we waited: forward along the new TAD
            # Fenced while this call waited its turn, or the wait outlasted our lease.
            if not self._serving.is_set() or not self._lease_held(
                f"{request.method} of atom {active.guid} after its wait"
            ):
                return pb.InvokeReply(error=self._unavailable())
            reply = pb.InvokeReply(tad=tad_to_pb(active.tad))
            try:
                reply.result = active.atom.invoke(
                    request.method,
                    request.args,
                    request_id=request.request_id,
                    chain=tuple(request.chain),
                    timeout=max(0.001, timeout - (time.monotonic() - started)),
                    open_chain=tuple(request.chain_open),
                )
            except HermesError as exc:
                reply.error.CopyFrom(pb_error(exc))
            if request.trace:
                reply.trace.append(pb.Hop(node=self.name, tad=tad_to_pb(active.tad), event="ran"))
            self._after_call(active, reply)
            if active.meta.placement == FOLLOW_CALLER:
                self._follow_caller(active, request.caller_node)
        if active.move_request is not None:
            node, active.move_request = active.move_request, None
            self._background.submit(self._move_quietly, active.guid, node)
        return reply

    def _after_call(self, active: ActiveAtom, reply: pb.InvokeReply) -> None:
        """Checkpoints due after a call; for every-call atoms, before the reply leaves."""
        policy = active.meta.checkpoint
        due = active.checkpoint_request
        if policy.mode == EVERY_CALL:
            due = True
        elif policy.mode == PERIODIC and policy.every_calls > 0:
            due = due or (
                active.atom.generation - active.checkpointed_generation >= policy.every_calls
            )
        if not due or active.atom.generation == active.checkpointed_generation:
            return
        # Only every-call checkpoints and requested ones promise durability.
        periodic = policy.mode == PERIODIC and not active.checkpoint_request
        active.checkpoint_request = False
        try:
            try:
                self.checkpoint_atom(active, periodic=periodic)
            except MigrationError:
                if active.guid not in self._unsent_aborts:
                    raise
                # The storesite is back but has not heard our abort of a move
                # yet, so it still thinks the atom is moving: tell it, retry.
                self._retry_aborts()
                self.checkpoint_atom(active, periodic=periodic)
        except HermesError as exc:
            if policy.mode == EVERY_CALL and reply.WhichOneof("outcome") == "result":
                # The call ran but is not durable: the caller must not take it as acknowledged.
                reply.error.CopyFrom(
                    pb_error(
                        StorageError(f"atom {active.guid}: call ran but checkpoint failed: {exc}")
                    )
                )
            else:
                log.warning("atom %s: checkpoint failed: %s", active.guid, exc)

    def _follow_caller(self, active: ActiveAtom, caller_node: str) -> None:
        """Placement policy: move toward the node that makes most of the calls."""
        active.callers[caller_node] += 1
        if active.callers.total() < FOLLOW_WINDOW:
            return
        node, calls = active.callers.most_common(1)[0]
        active.callers.clear()
        if (
            node
            and node != self.name
            and calls >= FOLLOW_SHARE * FOLLOW_WINDOW
            and active.move_request is None
            and node in self.naming.nodes()
        ):
            log.info(
                "atom %s follows its caller: %d of %d calls from %s",
                active.guid,
                calls,
                FOLLOW_WINDOW,
                node,
            )
            active.move_request = node

    def _forward_bounded(self, request: pb.InvokeRequest, tad: TAD) -> pb.InvokeReply:
        """Forward, holding at most an atom's share of the workers for one GUID
        (a slow atom elsewhere must not take this node's workers either)."""
        guid = request.guid
        with self._invokes_lock:
            if self._forwarding[guid] >= self._max_calls_per_atom:
                return pb.InvokeReply(
                    error=pb_error(
                        CapacityError(
                            f"node {self.name} is already forwarding {self._forwarding[guid]} "
                            f"calls to atom {guid} (limit {self._max_calls_per_atom}); "
                            f"{request.method} refused, try later"
                        )
                    ),
                    tad=tad_to_pb(tad),
                )
            self._forwarding[guid] += 1
        try:
            return self._forward(request, tad)
        finally:
            with self._invokes_lock:
                self._forwarding[guid] -= 1
                if self._forwarding[guid] <= 0:
                    del self._forwarding[guid]

    def _forward(self, request: pb.InvokeRequest, tad: TAD) -> pb.InvokeReply:
        forwarded = pb.InvokeRequest()
        forwarded.CopyFrom(request)
        forwarded.hops = request.hops + 1
        try:
            address = self.invoker.node_address(tad.node)
            stub = self.channels.stub(address, pbg.SupervisorStub)
            reply: pb.InvokeReply = stub.Invoke(forwarded, timeout=request.timeout or 30.0)
        except HermesError as exc:
            reply = pb.InvokeReply(error=pb_error(exc), tad=tad_to_pb(tad))
        except grpc.RpcError as exc:
            err = error_from_rpc(exc, f"node {tad.node} (forwarded from {self.name})")
            reply = pb.InvokeReply(error=pb_error(err), tad=tad_to_pb(tad))
        newest = tad_from_pb(reply.tad)
        if newest is not None:
            self.stash.update(request.guid, newest)
        if request.trace:
            reply.trace.insert(0, pb.Hop(node=self.name, tad=tad_to_pb(tad), event="forward"))
        return reply

    def Invoke(self, request: pb.InvokeRequest, context: grpc.ServicerContext) -> pb.InvokeReply:
        with self._invokes_lock:
            if self._invokes >= self._max_invokes:
                busy = True
            else:
                busy = False
                self._invokes += 1
        if busy:
            return pb.InvokeReply(
                error=pb_error(
                    CapacityError(
                        f"node {self.name} is serving {self._max_invokes} invocations, its "
                        f"limit ({self._reserved_workers} of {self.config.workers} workers stay "
                        "free for control calls); try later"
                    )
                )
            )
        try:
            return self.dispatch_invoke(request)
        finally:
            with self._invokes_lock:
                self._invokes -= 1

    def dispatch_send(self, request: pb.SendRequest) -> pb.SendReply:
        if self.fenced:
            return pb.SendReply(error=self._unavailable())
        active = self.atoms.get(request.guid)
        if active is not None:
            with active.cond:
                while active.state == "moving":
                    active.cond.wait(1.0)
                if active.state == "active":
                    active.atom.deliver(request.code, request.payload)
                    return pb.SendReply(tad=tad_to_pb(active.tad))
        tad = self.stash.get(request.guid)
        if tad is not None and tad.node != self.name:
            limit = self._hop_limit(request.hop_limit)
            if request.hops >= limit:
                return pb.SendReply(moved=tad_to_pb(tad), tad=tad_to_pb(tad))
            forwarded = pb.SendRequest()
            forwarded.CopyFrom(request)
            forwarded.hops = request.hops + 1
            try:
                stub = self.channels.stub(self.invoker.node_address(tad.node), pbg.SupervisorStub)
                reply: pb.SendReply = stub.Send(forwarded, timeout=30.0)
            except HermesError as exc:
                return pb.SendReply(error=pb_error(exc), tad=tad_to_pb(tad))
            except grpc.RpcError as exc:
                err = error_from_rpc(exc, f"node {tad.node} (forwarded from {self.name})")
                return pb.SendReply(error=pb_error(err), tad=tad_to_pb(tad))
            newest = tad_from_pb(reply.tad)
            if newest is not None:
                self.stash.update(request.guid, newest)
            return reply
        return pb.SendReply(
            error=pb_error(
                UnreachableError(f"node {self.name} has no record of atom {request.guid}")
            )
        )

    def Send(self, request: pb.SendRequest, context: grpc.ServicerContext) -> pb.SendReply:
        return self.dispatch_send(request)

    # ------------------------------------------------------------ create

    def Create(self, request: pb.CreateRequest, context: grpc.ServicerContext) -> pb.CreateReply:
        try:
            guid, tad = self.create_atom(request)
        except HermesError as exc:
            abort_with(context, exc)
        return pb.CreateReply(guid=guid, tad=tad_to_pb(tad))

    def create_atom(self, request: pb.CreateRequest) -> tuple[str, TAD]:
        incarnation = self._taking_incarnation("cannot create atoms")
        meta = pb.AtomMeta()
        meta.CopyFrom(request.meta)
        aliases = [_parse_alias(a) for a in request.aliases]
        if meta.name:
            validate_name(meta.name, "atom name")
        if meta.placement not in PLACEMENTS:
            raise ConfigurationError(
                f"placement {meta.placement!r} is not one of: none, {FOLLOW_CALLER}"
            )
        check_atom_meta(meta)
        refusal = tags_refusal("", self.name, meta.tags, self.config.tags)
        if refusal:
            raise ConfigurationError(f"cannot create the atom here: {refusal}")
        window = ReplyWindow(
            meta.reply_window_entries or DEFAULT_REPLY_ENTRIES, meta.reply_window_seconds
        )
        loaded = self.runtime.load(request.module)
        meta.module_hash = loaded.hash
        storesites = self.naming.storesites()
        if not storesites:
            raise UnreachableError("no storesite is running in this cluster; cannot create atoms")
        sid = sorted(storesites)[hash(loaded.hash) % len(storesites)]
        guid = str(GUID.new(sid))
        stub = self.channels.stub(storesites[sid].address, pbg.StoresiteStub)
        # Checked again before the atom serves; here so a node out of its lease
        # records nothing at the storesite.
        self._check_lease("cannot create atoms")
        if meta.name:
            self.naming.bind(meta.name, guid)
        try:
            atom = self.runtime.create(
                loaded, guid, self.host, request.init_args, reentrant=meta.reentrant
            )
            # From here on the window travels in the atom's snapshots.
            atom.replies.window = window
            tad = TAD(self.name, 1)
            snapshot, generation = atom.snapshot_with_generation()
            try:
                stub.PutModule(pb.ModuleBytes(module=request.module), timeout=10.0)
                stub.RegisterAtom(
                    pb.RegisterAtomRequest(
                        guid=guid,
                        meta=meta,
                        tad=tad_to_pb(tad),
                        snapshot=snapshot,
                        checksum=snapshot_checksum(snapshot),
                        generation=generation,
                        incarnation=incarnation,
                    ),
                    timeout=10.0,
                )
            except grpc.RpcError as exc:
                atom.close()
                raise error_from_rpc(exc, f"storesite {sid} (create of atom {guid})") from exc
            self._modules.setdefault(loaded.hash, loaded)
            try:
                self._check_lease(f"atom {guid} was not created")
            except HermesError:
                atom.close()
                raise
            active = self.install(guid, atom, meta, tad)
            active.checkpoint_seq = 1
            for scope, alias in aliases:
                self.naming.alias_add(scope, alias, guid)
        except BaseException:
            if meta.name:
                with contextlib.suppress(HermesError):
                    self.naming.unbind(meta.name)
            raise
        log.info("created atom %s (%s) at %s", meta.name or "-", guid, tad)
        return guid, tad

    # ------------------------------------------------------------ locate / status

    def Locate(self, request: pb.LocateRequest, context: grpc.ServicerContext) -> pb.LocateReply:
        held = request.guid in self.atoms
        if held and not self._lease_held(f"Locate of {request.guid}"):
            # Neither "here" (we may not serve) nor "not here" (the asker
            # could place a second copy while we still hold this one).
            abort_with(
                context,
                UnreachableError(
                    f"node {self.name} is fenced (its name-service session may have expired); "
                    f"whether it holds atom {request.guid} is not known"
                ),
            )
        reply = pb.LocateReply(active_here=held, incarnation=self.incarnation)
        tad = self.stash.get(request.guid)
        if tad is not None:
            reply.tad.CopyFrom(tad_to_pb(tad))
        return reply

    def Status(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.NodeStatus:
        return pb.NodeStatus(
            name=self.name,
            active_atoms=len(self.atoms),
            stash_entries=len(self.stash),
            pid=os.getpid(),
            rss_bytes=_rss_bytes(),
            tags=list(self.config.tags),
            atom_calls=sum(a.calls for a in list(self.atoms.values())),
        )

    def StashPut(self, request: pb.StashPutRequest, context: grpc.ServicerContext) -> pb.Empty:
        tad = tad_from_pb(request.tad)
        if tad is None:
            abort_with(context, HermesError("StashPut needs a TAD"))
        active = self.atoms.get(request.guid)
        if active is not None and tad.node != self.name:
            # Test-only relocation: the atom goes to tad.node through the same
            # Accept path a migration uses, without the storesite's consent.
            self._relocate_for_test(active, tad)
        self.stash.force(request.guid, tad)
        return pb.Empty()

    def _relocate_for_test(self, active: ActiveAtom, tad: TAD) -> None:
        snapshot = self._freeze(active, wait=10.0)
        copy = pb.CopyRequest(
            guid=active.guid,
            tad=tad_to_pb(tad),
            snapshot=snapshot,
            meta=active.meta,
            source=self.name,
        )
        try:
            self.invoker.nodes.activate_copy(self.invoker.node(tad.node), copy)
        except HermesError:
            self._thaw(active)
            raise
        self.drop(active, tad)

    # ------------------------------------------------------------ checkpoint / passivate

    def checkpoint_atom(self, active: ActiveAtom, *, periodic: bool = False) -> TAD:
        """Checkpoint ``active`` now; ``periodic``: no caller is told its calls are durable."""
        # The seq is drawn with the snapshot, under one lock: a snapshot taken
        # later always gets a higher seq, so the storesite, which keeps only
        # the highest seq of an age, never lets an older state replace a newer
        # one that a later call's reply already promised.
        with active.checkpoint_lock:
            snapshot, generation = active.atom.snapshot_with_generation()
            self._test_pause("checkpoint-snapshot")
            active.checkpoint_seq += 1
            seq = active.checkpoint_seq
        self._send_state(
            "PutCheckpoint",
            pb.CheckpointRequest(
                guid=active.guid,
                tad=tad_to_pb(active.tad),
                seq=seq,
                checksum=snapshot_checksum(snapshot),
                generation=generation,
                periodic=periodic,
            ),
            snapshot,
        )
        active.checkpointed_generation = max(active.checkpointed_generation, generation)
        active.last_checkpoint = time.monotonic()
        return active.tad

    def _send_state(
        self, method: str, request: pb.CheckpointRequest | pb.PassivatedRequest, snapshot: bytes
    ) -> None:
        """Call storesite ``method`` with ``request`` carrying ``snapshot``. A large
        snapshot is sent in pieces (``<method>Pieces``), so that no single message
        is built or parsed for the whole state: either holds the interpreter long
        enough to starve the node's ZooKeeper session."""
        timeout = transfer_timeout(len(snapshot))
        if len(snapshot) < 2 * CHECKPOINT_PIECE_BYTES:
            request.snapshot = snapshot
            self._storesite_call(request.guid, method, request, timeout)
            return
        piece_type = _PIECES[method]

        def pieces() -> Iterator[Any]:
            yield piece_type(head=request)
            view = memoryview(snapshot)
            for offset in range(0, len(view), CHECKPOINT_PIECE_BYTES):
                yield_gil()
                yield piece_type(data=bytes(view[offset : offset + CHECKPOINT_PIECE_BYTES]))

        self._storesite_call(request.guid, f"{method}Pieces", pieces(), timeout)

    def Checkpoint(self, request: pb.GuidRequest, context: grpc.ServicerContext) -> pb.TAD:
        active = self._active_or_abort(request.guid, context)
        try:
            with active.fixed(30.0) as ok:
                if not ok:
                    raise MigrationError(f"atom {request.guid} left node {self.name}")
                return tad_to_pb(self.checkpoint_atom(active))
        except HermesError as exc:
            abort_with(context, exc)

    def passivate_atom(self, active: ActiveAtom) -> TAD:
        snapshot = self._freeze(active, wait=30.0)
        try:
            self._send_state(
                "Passivated",
                pb.PassivatedRequest(
                    guid=active.guid,
                    tad=tad_to_pb(active.tad),
                    checksum=snapshot_checksum(snapshot),
                    generation=active.frozen_generation,
                ),
                snapshot,
            )
        except HermesError:
            self._thaw(active)
            raise
        self.drop(active, None)
        log.info("atom %s passivated", active.guid)
        return active.tad

    def Passivate(self, request: pb.GuidRequest, context: grpc.ServicerContext) -> pb.TAD:
        active = self._active_or_abort(request.guid, context)
        try:
            return tad_to_pb(self.passivate_atom(active))
        except HermesError as exc:
            abort_with(context, exc)

    def _active_or_abort(self, guid: str, context: grpc.ServicerContext) -> ActiveAtom:
        active = self.atoms.get(guid)
        if active is None or active.state != "active":
            abort_with(context, UnreachableError(f"atom {guid} is not active on node {self.name}"))
        return active

    # ------------------------------------------------------------ migration (source)

    def _freeze(self, active: ActiveAtom, wait: float) -> bytes:
        """Mark moving (new calls wait), wait for unfix, snapshot."""
        deadline = time.monotonic() + wait
        with active.cond:
            if active.state != "active":
                raise MigrationError(f"atom {active.guid} is already {active.state}")
            active.state = "moving"
            while active.inflight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    active.state = "active"
                    active.cond.notify_all()
                    raise MigrationError(
                        f"atom {active.guid} stayed fixed by a running call for {wait:.0f}s"
                    )
                active.cond.wait(left)
        try:
            snapshot, active.frozen_generation = active.atom.snapshot_with_generation()
        except HermesError:
            self._thaw(active)
            raise
        return snapshot

    def _thaw(self, active: ActiveAtom) -> None:
        with active.cond:
            if active.state == "moving":
                active.state = "active"
            active.cond.notify_all()

    def migrate_atom(self, guid: str, destination: str) -> pb.MigrateReply:
        started = time.perf_counter()
        validate_name(destination, "node name")
        active = self.atoms.get(guid)
        if active is None or active.state != "active":
            raise NotActiveHereError(f"atom {guid} is not active on node {self.name}")
        if destination == self.name:
            raise MigrationError(f"atom {guid} is already on node {destination}")
        members = self.naming.nodes()
        if destination not in members:
            raise MigrationError(f"node {destination!r} is not a live member of the cluster")
        refusal = tags_refusal(guid, destination, active.meta.tags, members[destination].tags)
        if refusal:
            raise MigrationError(f"cannot move: {refusal}")
        held_from = time.perf_counter()
        snapshot = self._freeze(active, wait=30.0)
        phases = {"snapshot": time.perf_counter()}
        try:
            prepared = self._storesite_call(
                guid,
                "Prepare",
                pb.PrepareRequest(guid=guid, source=tad_to_pb(active.tad), destination=destination),
            )
            assert isinstance(prepared, pb.PrepareReply)
            phases["prepare"] = time.perf_counter()
            self._test_pause("prepared")
            new_tad = TAD(destination, int(prepared.age))
        except HermesError as exc:
            self._thaw(active)
            raise MigrationError(f"atom {guid}: storesite refused the move: {exc}") from exc
        checksum = snapshot_checksum(snapshot)
        accept = pb.CopyRequest(
            guid=guid,
            tad=tad_to_pb(new_tad),
            snapshot=snapshot,
            meta=active.meta,
            source=self.name,
            checksum=checksum,
        )
        # The two copies travel at once: the destination stages its copy while
        # the storesite stages the checkpoint-to-be, so COMMIT carries no state.
        staging = self._transfers.submit(
            self._storesite_call,
            guid,
            "Stage",
            pb.CommitRequest(
                guid=guid,
                tad=tad_to_pb(new_tad),
                snapshot=snapshot,
                checksum=checksum,
                generation=active.frozen_generation,
            ),
            60.0,
        )
        dst = None
        try:
            dst = self.invoker.node(destination)
            staged = self.invoker.nodes.stage_copy(dst, accept)
            # The COMMIT names who staged the copy: a restarted destination has none.
            if not staged:
                raise MigrationError(f"node {destination} did not say which incarnation staged")
            accept.incarnation = staged
            staging.result()
            phases["transfer"] = time.perf_counter()
            self._test_pause("transferred")
        except HermesError as exc:
            err = exc
            with contextlib.suppress(HermesError):
                staging.result()
            self._abort_move(guid, new_tad, dst)
            self._thaw(active)
            raise MigrationError(f"atom {guid}: move to {destination} failed: {err}") from exc
        try:
            self._storesite_call(
                guid,
                "Commit",
                pb.CommitRequest(guid=guid, tad=tad_to_pb(new_tad), incarnation=accept.incarnation),
            )
        except HermesError as exc:
            self._abort_move(guid, new_tad, dst)
            self._thaw(active)
            raise MigrationError(f"atom {guid}: commit at the storesite failed: {exc}") from exc
        phases["commit"] = time.perf_counter()
        self._test_pause("committed")
        # Committed: the destination is where the atom lives now.
        self.drop(active, new_tad)
        accept.snapshot = b""
        accept.ClearField("checksum")
        try:
            self.invoker.nodes.activate_copy(dst, accept)
        except HermesError as exc:
            # The storesite has the checkpoint and the location: a live
            # destination activates its staged copy when it asks the storesite;
            # if that incarnation is gone, the atom is recovered from there.
            err = exc
            log.warning("atom %s: activation at %s failed after commit: %s", guid, destination, err)
            raise MigrationError(
                f"atom {guid}: the move to {destination} is committed but {destination} "
                f"did not activate it ({err}); it comes back from the staged copy there, "
                "or from its checkpoint on another node if that node is gone"
            ) from exc
        phases["activate"] = time.perf_counter()
        held_ms = (time.perf_counter() - held_from) * 1000
        total_ms = (time.perf_counter() - started) * 1000
        steps, last = [], held_from
        for step, at in phases.items():
            steps.append(f"{step} {(at - last) * 1000:.1f}")
            last = at
        log.info(
            "atom %s moved to %s in %.1f ms (%d bytes; ms: %s)",
            guid,
            new_tad,
            total_ms,
            len(snapshot),
            ", ".join(steps),
        )
        return pb.MigrateReply(
            tad=tad_to_pb(new_tad), state_bytes=len(snapshot), held_ms=held_ms, total_ms=total_ms
        )

    def _abort_move(self, guid: str, tad: TAD, dst: Peer | None) -> None:
        """Before COMMIT: the storesite forgets the move, the destination its staged copy."""
        try:
            self._storesite_call(guid, "Abort", pb.AbortRequest(guid=guid, age=tad.age), 5.0)
        except HermesError as exc:
            # Until it hears this, the storesite refuses our checkpoints.
            log.warning("atom %s: abort not heard by the storesite (%s); will retry", guid, exc)
            self._unsent_aborts[guid] = tad.age
        if dst is not None:
            with contextlib.suppress(HermesError):
                self.invoker.nodes.discard_copy(dst, guid, tad)

    def _move_quietly(self, guid: str, destination: str) -> None:
        try:
            self.migrate_atom(guid, destination)
        except HermesError as exc:
            log.warning("atom %s: move_to %s failed: %s", guid, destination, exc)

    def Migrate(self, request: pb.MigrateRequest, context: grpc.ServicerContext) -> pb.MigrateReply:
        try:
            return self.migrate_atom(request.guid, request.destination)
        except HermesError as exc:
            abort_with(context, exc)

    # ------------------------------------------------------------ destination

    def StageCopy(self, request: pb.CopyRequest, context: grpc.ServicerContext) -> pb.CopyReply:
        try:
            return pb.CopyReply(incarnation=self.accept_atom(request, commit=False))
        except HermesError as exc:
            abort_with(context, exc)

    def ActivateCopy(self, request: pb.CopyRequest, context: grpc.ServicerContext) -> pb.CopyReply:
        try:
            return pb.CopyReply(incarnation=self.accept_atom(request, commit=True))
        except HermesError as exc:
            abort_with(context, exc)

    def DiscardCopy(
        self, request: pb.DiscardCopyRequest, context: grpc.ServicerContext
    ) -> pb.Empty:
        tad = tad_from_pb(request.tad)
        if tad is None or tad.node != self.name:
            abort_with(
                context,
                MigrationError(f"atom {request.guid}: node {self.name} was sent a TAD for {tad}"),
            )
        self._discard_staged(request.guid)
        return pb.Empty()

    def accept_atom(self, request: pb.CopyRequest, *, commit: bool) -> str:
        """Stage a copy, or (``commit``) activate one; returns the incarnation that took it."""
        guid = request.guid
        tad = tad_from_pb(request.tad)
        if tad is None or tad.node != self.name:
            raise MigrationError(f"atom {guid}: node {self.name} was sent a TAD for {tad}")
        if not commit and not request.snapshot:
            raise MigrationError(f"atom {guid}: a staged copy needs a snapshot")
        incarnation = self._taking_incarnation(f"cannot accept atom {guid}")
        if request.snapshot and request.HasField("checksum"):
            # Never restore damage: a storesite or a source checked it, but
            # it may have been hurt on the way here.
            verify_checksum(
                request.snapshot,
                request.checksum,
                f"snapshot of atom {guid} sent to node {self.name} for {tad}",
            )
        if commit and request.incarnation and request.incarnation != incarnation:
            self._discard_staged(guid)
            raise MigrationError(
                f"atom {guid}: the move committed incarnation {request.incarnation} of node "
                f"{self.name}, which restarted as {incarnation}; it holds no staged copy"
            )
        if not commit:
            refusal = tags_refusal(guid, self.name, request.meta.tags, self.config.tags)
            if refusal:
                raise MigrationError(refusal)
            module = self.module(request.meta.module_hash, guid)
            atom = self.runtime.restore(
                module, guid, self.host, request.snapshot, reentrant=request.meta.reentrant
            )
            meta = pb.AtomMeta()
            meta.CopyFrom(request.meta)
            try:
                self._check_lease(f"atom {guid} was not staged")
            except HermesError:
                atom.close()
                raise
            with self._staged_lock:
                old = self._staged.get(guid)
                if old is not None and old.tad.age > tad.age:
                    newer: StagedCopy | None = old
                else:
                    newer = None
                    self._staged[guid] = StagedCopy(tad, meta, atom)
            if newer is not None:
                # A late request: a newer attempt already staged the atom here.
                atom.close()
                raise MigrationError(
                    f"atom {guid}: a copy for {newer.tad} is staged on {self.name}; {tad} is older"
                )
            if old is not None:
                old.atom.close()
            if self.incarnation != incarnation:
                self._discard_staged(guid)  # our session was lost meanwhile
                self._still_incarnation(incarnation, f"atom {guid} was not staged")
            return incarnation
        # Before taking the staged copy: refused now, it stays staged and
        # settles later by asking the storesite.
        self._check_lease(f"atom {guid} was not activated")
        with self._staged_lock:
            staged = self._staged.pop(guid, None)
        if staged is not None and staged.tad.age == tad.age:
            meta, atom = staged.meta, staged.atom
        else:
            if staged is not None:
                staged.atom.close()
            if not request.snapshot:
                raise MigrationError(
                    f"atom {guid}: nothing staged on {self.name} for age {tad.age}"
                )
            module = self.module(request.meta.module_hash, guid)
            atom = self.runtime.restore(
                module, guid, self.host, request.snapshot, reentrant=request.meta.reentrant
            )
            meta = request.meta
            try:
                self._check_lease(f"atom {guid} was not activated")  # the restore took a while
            except HermesError:
                atom.close()
                raise
        active = self.install(guid, atom, meta, tad)
        if self.incarnation != incarnation:
            self.drop(active, None)  # our session was lost meanwhile: it must not serve
            self._still_incarnation(incarnation, f"atom {guid} was not activated")
        log.info("atom %s active here at %s (from %s)", guid, tad, request.source or "storesite")
        return incarnation

    def _discard_staged(self, guid: str) -> None:
        with self._staged_lock:
            staged = self._staged.pop(guid, None)
        if staged is not None:
            staged.atom.close()

    def resolve_staged(self, guid: str) -> bool:
        """Settle a staged copy whose source went quiet; True if it is now active here.

        The source tells us after COMMIT; if it died in between, the storesite
        says where the atom is: here at the staged age (committed: activate
        the copy), somewhere newer (discard it), or still older (the move may
        still commit: keep it).
        """
        staged = self._staged.get(guid)
        if staged is None:
            return False
        try:
            where = self.invoker.locate(guid)
        except HermesError as exc:
            log.debug("atom %s: cannot settle the staged copy yet: %s", guid, exc)
            return False
        if where == staged.tad and not self._lease_held(f"activation of staged atom {guid}"):
            return False
        with self._staged_lock:
            if self._staged.get(guid) is not staged:
                return guid in self.atoms
            if where == staged.tad:
                del self._staged[guid]
            elif where.age > staged.tad.age:
                del self._staged[guid]
                staged.atom.close()
                log.info(
                    "atom %s: dropped a staged copy for %s, it is at %s", guid, staged.tad, where
                )
                return False
            else:
                return False
        self.install(guid, staged.atom, staged.meta, staged.tad)
        log.warning(
            "atom %s: its move to %s was committed but the source went quiet; "
            "activated the staged copy",
            guid,
            staged.tad,
        )
        return True

    def _test_pause(self, step: str) -> None:
        seconds = self._pauses.pop(step, 0.0)
        if seconds > 0:
            log.warning("test hook: paused at %s for %.1f s", step, seconds)
            self._stopping.wait(seconds)

    def TestHook(self, request: pb.TestHookRequest, context: grpc.ServicerContext) -> pb.Empty:
        if request.pause_at not in (
            "prepared",
            "transferred",
            "committed",
            "checkpoint-snapshot",
            "activate-stage",
        ):
            abort_with(context, ConfigurationError(f"unknown pause step {request.pause_at!r}"))
        self._pauses[request.pause_at] = request.seconds
        return pb.Empty()

    def _retry_aborts(self) -> None:
        for guid, age in list(self._unsent_aborts.items()):
            try:
                self._storesite_call(guid, "Abort", pb.AbortRequest(guid=guid, age=age), 2.0)
            except HermesError:
                continue
            if self._unsent_aborts.get(guid) == age:
                del self._unsent_aborts[guid]
            log.info("atom %s: the storesite heard the abort of the move at age %d", guid, age)

    def Activate(
        self, request: pb.ActivateRequest, context: grpc.ServicerContext
    ) -> pb.ActivateReply:
        """Activation by a storesite (dormant atom, recovery), in two steps (DESIGN.md §6).

        ``stage``: restore the copy staged and name our incarnation; the copy
        serves only after ``confirm``, which the storesite sends once it has
        recorded this TAD durably — or, if that never arrives, once the
        storesite's record names this TAD when the staged copy asks
        (:meth:`resolve_staged`). A late stage request, after the storesite
        gave up on this node, thus never serves: the record names another TAD.
        A request without either is the one-step activation of older storesites.
        """
        accept = pb.CopyRequest(
            guid=request.guid,
            tad=request.tad,
            snapshot=b"" if request.confirm else request.snapshot,
            meta=request.meta,
            source="",
            incarnation=request.incarnation if request.confirm else "",
        )
        if request.HasField("checksum") and not request.confirm:
            accept.checksum = request.checksum
        try:
            if request.incarnation and request.incarnation != self.incarnation:
                raise MigrationError(
                    f"atom {request.guid}: activation meant for incarnation "
                    f"{request.incarnation} of node {self.name}, which is now "
                    f"{self.incarnation or 'not registered'}"
                )
            if request.stage and not request.snapshot:
                raise MigrationError(f"atom {request.guid}: a staged activation needs a snapshot")
            if request.stage:
                self._test_pause("activate-stage")  # a slow restore
            active = self.atoms.get(request.guid)
            if request.confirm and active is not None and active.tad == tad_from_pb(request.tad):
                # The staged copy already settled by asking the storesite.
                return pb.ActivateReply(tad=request.tad, incarnation=self.incarnation)
            incarnation = self.accept_atom(accept, commit=not request.stage)
        except HermesError as exc:
            abort_with(context, exc)
        if request.stage:
            log.info(
                "atom %s staged here at %s; it serves once the storesite has recorded it",
                request.guid,
                tad_from_pb(request.tad),
            )
        return pb.ActivateReply(tad=request.tad, incarnation=incarnation)


def _parse_alias(text: str) -> tuple[str, str]:
    scope, sep, alias = text.partition("=")
    if not sep:
        raise ConfigurationError(f"alias {text!r} must be SCOPE=ALIAS")
    return validate_name(scope, "alias scope"), validate_name(alias, "alias")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
