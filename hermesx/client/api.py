"""The Python client: invoke atoms by name from outside the cluster (docs/DESIGN.md §4, §8).

    with Client() as client:            # HERMESX_ZK / HERMESX_CLUSTER, or the local cluster
        counter = client.atom("c1")
        counter.incr(5)                  # -> 5, wherever c1 runs

Arguments are packed with msgpack: one positional argument is sent as it
is, several as an array, keywords as a map.

Exactly once. Every call carries a request id, and a call whose outcome is
unknown (a node or the storesite failed after the call was sent) is sent
again with the same id until the call's deadline: the atom answers the first
run's reply, or runs the call if it never did. When the deadline passes
first, the call fails with :class:`~hermesx.core.errors.OutcomeUnknownError`,
whose ``request_id`` is the id to send again later::

    try:
        counter.incr(5)
    except OutcomeUnknownError as exc:
        ...                                              # later, once things settle:
        client.atom("c1", request_id=exc.request_id).incr(5)   # runs at most once

The same id with ``client.invoke(..., request_id=...)``. A retry whose reply
has left the atom's reply window is refused with
:class:`~hermesx.core.errors.RequestExpiredError` and never runs again (see
:mod:`hermesx.core.replies` for the window and the form of request ids).
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Sequence
from typing import Any

from hermesx.core import codec
from hermesx.core.config import ClusterAddress, resolve_cluster
from hermesx.core.errors import (
    ConfigurationError,
    HermesError,
    NameNotFoundError,
    NotActiveHereError,
    UnreachableError,
)
from hermesx.core.identity import TAD
from hermesx.core.replies import ReplyWindow, parse_reply_window
from hermesx.core.types import (
    DrainResult,
    InvokeOutcome,
    Location,
    MigrationResult,
    NodeStatus,
)
from hermesx.routing.departures import watch_departures
from hermesx.routing.invoker import Invoker
from hermesx.routing.naming import Member, Naming
from hermesx.rpc import roles
from hermesx.rpc.atom_meta import MAX_CHECKPOINT_CALLS, check_atom_meta
from hermesx.rpc.convert import migration_from_pb, node_status_from_pb, tad_from_pb
from hermesx.rpc.node_client import NodeClient
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.ranking import in_service
from hermesx.rpc.roles import CLIENT_CERT_NAME
from hermesx.rpc.storesite_client import StoresiteClient
from hermesx.rpc.wire import ChannelPool, TLSIdentity

__all__ = ["AtomProxy", "Client", "parse_checkpoint_policy"]


class AtomProxy:
    """``client.atom("c1").incr(5)``: attribute access names the method.

    Made with a ``request_id`` (``client.atom("c1", request_id=rid)``), the
    proxy's calls send that id: the way to retry a call that failed with
    ``outcome_unknown``. Each call made through a proxy without one gets a
    new id.
    """

    def __init__(
        self, client: Client, target: str, request_id: str = "", timeout: float | None = None
    ) -> None:
        self._client = client
        self._target = target
        self._request_id = request_id
        self._timeout = timeout

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._client.call_with(
                self._target,
                method,
                args,
                kwargs,
                request_id=self._request_id,
                timeout=self._timeout,
            )

        return call


class Client:
    """A connection to one cluster: invokes its atoms by name, creates, moves and finds them.

    ``zk`` and ``cluster`` default to ``$HERMESX_ZK`` / ``$HERMESX_CLUSTER``,
    or the local cluster of ``hermesx up``; ``tls`` to ``$HERMESX_TLS`` or the
    local cluster's certificates. ``timeout`` bounds each call, retries
    included; ``hop_limit`` how many times a call may be forwarded. Use it in
    a ``with`` block, or call :meth:`close` when done.
    """

    def __init__(
        self,
        zk: str | None = None,
        cluster: str | None = None,
        *,
        timeout: float = 30.0,
        hop_limit: int = 4,
        tls: str | pathlib.Path | None = None,
        cert: str = CLIENT_CERT_NAME,
    ) -> None:
        """``cert`` names the certificate (in the cluster's TLS directory) the client shows."""
        self.address: ClusterAddress = resolve_cluster(zk, cluster, tls)
        # A client only reads the name service (nodes bind names and aliases).
        self.naming = Naming(
            self.address.zk,
            self.address.cluster,
            tls=self.address.tls,
            role=roles.CLIENT,
            cert=cert,
        )
        # The certificate the client shows (None on a cluster without TLS).
        self.identity: TLSIdentity | None = None
        if self.address.tls is not None:
            from hermesx.rpc import security

            self.identity = TLSIdentity(self.address.tls, cert, self.address.cluster)
            if (
                cert == CLIENT_CERT_NAME
                and not security.load_certs(self.address.tls).cert(cert).exists()
            ):
                security.issue_cert(self.address.tls, self.address.cluster, cert, roles.CLIENT)
        self.channels = ChannelPool(self.identity)
        self.invoker = Invoker(
            self.naming, self.channels, deadline=timeout, hop_limit=hop_limit, settle_outcome=True
        )
        self.node_client: NodeClient = self.invoker.nodes
        self._started = False

    def __enter__(self) -> Client:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Connect to the name service (the first call does it when this was not called)."""
        if not self._started:
            self.naming.start()
            watch_departures(self.naming, self.channels)
            self._started = True

    def close(self) -> None:
        """Disconnect from the name service and close every channel."""
        if self._started:
            self.naming.close()
            self._started = False
        self.channels.close()

    # ------------------------------------------------------------ invoke

    def atom(self, target: str, *, request_id: str = "", timeout: float | None = None) -> AtomProxy:
        """A proxy whose attributes call ``target``'s methods (with ``request_id``, if given)."""
        return AtomProxy(self, target, request_id, timeout)

    def call(self, target: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` of ``target`` (a name or GUID) with Python values; returns its result."""
        return self.call_with(target, method, args, kwargs)

    def call_with(
        self,
        target: str,
        method: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Any:
        """:meth:`call` with the arguments as values, and a request id or timeout of one's own."""
        if kwargs and args:
            raise ConfigurationError("pass either positional or keyword arguments, not both")
        payload: Any = kwargs if kwargs else (args[0] if len(args) == 1 else list(args) or None)
        outcome = self.invoke(
            target, method, codec.pack(payload), request_id=request_id, timeout=timeout
        )
        return codec.unpack(outcome.result)

    def invoke(
        self,
        target: str,
        method: str,
        args: bytes,
        *,
        via: str | None = None,
        trace: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> InvokeOutcome:
        """Call ``method`` with msgpack ``args``; ``request_id`` to retry an earlier call.

        ``via`` enters the cluster at that node; ``trace`` records the hops the
        call took in the outcome's ``trace``.
        """
        if not self._started:
            self.start()
        return self.invoker.invoke(
            target, method, args, request_id=request_id, via=via, trace=trace, timeout=timeout
        )

    # ------------------------------------------------------------ nodes

    def nodes(self) -> dict[str, Member]:
        """The live nodes of the cluster, by name."""
        self.start()
        return self.naming.nodes()

    def node_member(self, node: str) -> Member:
        """The live node named ``node``, to call through :attr:`node_client`."""
        self.start()
        return self.invoker.node(node)

    def node_status(self, node: str, timeout: float = 5.0) -> NodeStatus:
        """What ``node`` reports of itself (its atoms, stash, process and load)."""
        return node_status_from_pb(self.node_client.status(self.node_member(node), timeout))

    def drain(self, node: str, timeout: float = 30.0) -> DrainResult:
        """Take ``node`` out of service and move its atoms away (docs/DESIGN.md §5 "Drain")."""
        reply = self.node_client.drain(self.node_member(node), timeout)
        return DrainResult(node, reply.moved, reply.remaining, tuple(reply.failures))

    def pick_node(self, tags: Sequence[str] = ()) -> str:
        """A live node in service carrying ``tags``: one with room for an atom, least loaded."""
        candidates = [
            m for m in self.nodes().values() if set(tags) <= set(m.tags) and in_service(m)
        ]
        if not candidates:
            want = f" with tags {','.join(tags)}" if tags else ""
            raise UnreachableError(f"no live node{want} in cluster {self.address.cluster}")
        loads: list[tuple[bool, int, str]] = []
        for member in candidates:
            try:
                status = self.node_status(member.name)
            except HermesError:
                continue
            # A full node goes last: its create would be refused (docs/DESIGN.md §3).
            loads.append((status.atom_room == 0, status.active_atoms, member.name))
        if not loads:
            raise UnreachableError("no live node answered")
        return min(loads)[2]

    # ------------------------------------------------------------ atoms

    def create(
        self,
        wasm: bytes | bytearray | memoryview | pathlib.Path,
        *,
        name: str = "",
        on: str | None = None,
        aliases: Sequence[str] = (),
        init: Any = None,
        checkpoint: str = "every-call",
        reentrant: bool = False,
        tags: Sequence[str] = (),
        idle_passivate_seconds: float = 0.0,
        placement: str = "",
        reply_window: str = "",
    ) -> str:
        """Create an atom and return its GUID.

        ``reply_window``: how many replies (and for how long) the atom keeps
        for retried request ids, as ``ENTRIES``, ``SECONDSs`` or both
        (``"4096,600s"``); the default keeps 1,024 with no age limit.
        """
        window = parse_reply_window(reply_window) if reply_window else ReplyWindow()
        if isinstance(wasm, bytearray | memoryview):
            wasm = bytes(wasm)
        if isinstance(wasm, pathlib.Path):
            path = wasm
            try:
                wasm = path.read_bytes()
            except OSError as exc:
                raise ConfigurationError(f"cannot read module {path}: {exc.strerror}") from exc
        meta = pb.AtomMeta(
            name=name,
            checkpoint=parse_checkpoint_policy(checkpoint),
            reentrant=reentrant,
            tags=list(tags),
            idle_passivate_seconds=idle_passivate_seconds,
            placement=placement,
            reply_window_entries=window.entries,
            reply_window_seconds=window.seconds,
        )
        check_atom_meta(meta)
        node = on or self.pick_node(tags)
        request = pb.CreateRequest(
            module=wasm,
            meta=meta,
            init_args=codec.pack(init) if init is not None else b"",
            aliases=list(aliases),
        )
        guid, tad = self.node_client.create(self.node_member(node), request)
        if tad is not None:
            self.invoker.stash.update(guid, tad)
        return guid

    def guid_of(self, target: str) -> str:
        """The GUID of the atom named ``target`` (a GUID is its own)."""
        self.start()
        return self.naming.guid_of(target)

    def locate(self, target: str) -> Location:
        """Where the atom is now (its storesite activates it first if it is dormant)."""
        guid = self.guid_of(target)
        tad = self.invoker.locate(guid)
        storesite = self.naming.home(guid) or guid.rpartition(":")[0]
        return Location(guid, tad.node, tad.age, storesite)

    def _on_node_of(self, target: str) -> tuple[str, Member]:
        guid = self.guid_of(target)
        tad = self.invoker.locate(guid)
        return guid, self.node_member(tad.node)

    def migrate(self, target: str, node: str) -> MigrationResult:
        """Move an atom to ``node``; the source node coordinates the move."""
        guid = self.guid_of(target)
        if node not in self.nodes():
            raise NameNotFoundError(f"node {node!r} is not a live member of the cluster")
        last: HermesError | None = None
        for _ in range(3):  # the atom may move between locate and migrate
            guid, source = self._on_node_of(guid)
            try:
                reply = self.node_client.migrate(source, guid, node)
            except NotActiveHereError as exc:
                last = exc
                continue
            new = tad_from_pb(reply.tad)
            if new is not None:
                self.invoker.stash.update(guid, new)
            return migration_from_pb(guid, reply)
        assert last is not None
        raise last

    def checkpoint(self, target: str) -> TAD | None:
        """Checkpoint the atom now; returns the TAD the checkpoint was taken at."""
        guid, node = self._on_node_of(target)
        return self.node_client.checkpoint(node, guid)

    def passivate(self, target: str) -> TAD | None:
        """Checkpoint the atom and make it dormant; returns the TAD it was last active at."""
        guid, node = self._on_node_of(target)
        last = self.node_client.passivate(node, guid)
        # Active nowhere now: the next call asks the storesite, which activates it.
        self.invoker.stash.forget(guid)
        return last

    def move_home(self, target: str, storesite: str) -> str:
        """Make ``storesite`` the atom's home; the old home keeps a forwarding record."""
        guid = self.guid_of(target)
        sid, address = self.invoker.storesite_address(guid)
        if storesite not in self.naming.storesites():
            raise NameNotFoundError(f"storesite {storesite!r} is not a live member of the cluster")
        home = StoresiteClient(address, sid=sid, channels=self.channels)
        home.move_home(guid, storesite, timeout=120.0)
        return sid

    def stash_of(self, node: str, target: str) -> TAD | None:
        """The TAD ``node``'s stash holds for an atom (None when it knows nothing)."""
        guid = self.guid_of(target)
        return self.node_client.locate(self.node_member(node), guid, timeout=5.0).tad

    def lookup(self, pattern: str, *, scope: str | None = None, all: bool = False) -> list[str]:
        """GUIDs of atoms whose name (alias in ``scope``) matches ``pattern``: one, or ``all``."""
        self.start()
        return self.naming.lookup(pattern, scope=scope, all=all)

    def lookup_names(self, pattern: str, *, all: bool = False) -> list[tuple[str, str]]:
        """(name, GUID) of atoms whose name matches ``pattern``: one, or ``all``."""
        self.start()
        return self.naming.lookup_names(pattern, all=all)

    def names(self) -> dict[str, str]:
        """Every atom name of the cluster and its GUID."""
        self.start()
        return self.naming.names()


def parse_checkpoint_policy(text: str) -> pb.CheckpointPolicy:
    """``every-call``, ``on-request``, ``every:N`` (calls) or ``every:Ts`` (seconds).

    N and T must be greater than 0 and at most :data:`policy.MAX_CHECKPOINT_CALLS`
    / :data:`policy.MAX_CHECKPOINT_SECONDS`: ``every:0s`` would never checkpoint.
    """
    mode = pb.CheckpointPolicy
    if text == "every-call":
        return mode(mode=mode.EVERY_CALL)
    if text == "on-request":
        return mode(mode=mode.ON_REQUEST)
    kind, _, value = text.partition(":")
    parsed: pb.CheckpointPolicy | None = None
    if kind == "every" and value:
        with contextlib.suppress(ValueError):
            if value.endswith("s"):
                parsed = mode(mode=mode.PERIODIC, every_seconds=float(value[:-1]))
            else:
                calls = int(value)
                if not 0 < calls <= MAX_CHECKPOINT_CALLS:
                    raise ConfigurationError(
                        f"checkpoint policy {text!r}: the number of calls must be 1 to "
                        f"{MAX_CHECKPOINT_CALLS}"
                    )
                parsed = mode(mode=mode.PERIODIC, every_calls=calls)
    if parsed is None:
        raise ConfigurationError(
            f"checkpoint policy {text!r} is not one of every-call, on-request, every:N, every:Ts"
        )
    check_atom_meta(pb.AtomMeta(checkpoint=parsed))
    return parsed
