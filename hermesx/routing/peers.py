"""Where the invoker's calls go: live nodes, the storesite that knows an atom (docs/DESIGN.md §4).

:class:`Peers` is the part of the :class:`~hermesx.routing.invoker.Invoker`
that finds whom to call: a live node by name (through the name service), the
atom's storesite, and — the single fallback point of a broken forwarding
chain — where the storesite says the atom is (:meth:`Peers.locate`), which
it writes into the stash. Calls themselves go through :attr:`Peers.nodes`
(gRPC, or the node's call channel where it has one).

The call path finds a node's record with :meth:`Peers.route`, which keeps
the records it read (building one from the name service's cache costs more
than a call's other bookkeeping together): a watch on the cluster's nodes
drops them at any change, they are read again after ``ROUTE_TTL_S`` in any
case, and a call that finds a node's address dead drops that node's record
(:meth:`Peers.forget_route`), so a node restarted at a new address is found
at its new one by the call's next attempt.
"""

from __future__ import annotations

import threading
import time

from hermesx.core.errors import HermesError, UnreachableError
from hermesx.core.identity import GUID, TAD
from hermesx.observe import tracing
from hermesx.routing.naming import Member, Naming
from hermesx.routing.stash import Stash
from hermesx.rpc.callclient import CallConnection, CallPool
from hermesx.rpc.node_client import NodeClient, call_address
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.storesite_client import StoresiteClient
from hermesx.rpc.wire import ChannelPool

__all__ = ["INVOKE", "ROUTE_TTL_S", "Peers", "StoresiteAbsentError"]

# The longest a node's record read for calls is used without reading it again.
ROUTE_TTL_S = 5.0
# The call channel's request kind of an invocation (hermesx.node.calls.INVOKE).
INVOKE = "invoke"


class StoresiteAbsentError(UnreachableError):
    """The atom's storesite is not registered in the name service."""


class Peers:
    """Live nodes and storesites of the cluster, and the stash of where atoms are."""

    def __init__(self, naming: Naming, channels: ChannelPool, stash: Stash | None = None) -> None:
        self.naming = naming
        self.channels = channels
        self.nodes = NodeClient(channels)
        self.stash = stash if stash is not None else Stash()
        # node -> (its record, read again after this time.monotonic(), its call address)
        self._routes: dict[str, tuple[Member, float, str | None]] = {}
        # Bumped by every change of the cluster's nodes: a record read before it is stale.
        self._route_epoch = 0
        self._route_watch = threading.Lock()
        self._watching = False
        self._watch_tried = -ROUTE_TTL_S  # time.monotonic() of the last try to watch
        self._calls: CallPool | None = None  # the call channel's pool, once a lane used it

    # ------------------------------------------------------------ addresses

    def node(self, node: str) -> Member:
        """The live member named ``node``, to call through :attr:`nodes`."""
        member = self.naming.nodes().get(node)
        if member is None:
            raise UnreachableError(f"node {node!r} is not a live member of the cluster")
        return member

    def route(self, node: str) -> Member:
        """:meth:`node` for a call: the record as read lately (see the module's docstring)."""
        found = self._routes.get(node)
        if found is not None and found[1] > time.monotonic():
            return found[0]
        if not self._watching and time.monotonic() - self._watch_tried >= ROUTE_TTL_S:
            self._watch_routes()
        epoch = self._route_epoch
        member = self.node(node)
        if epoch == self._route_epoch:
            self._routes[node] = (member, time.monotonic() + ROUTE_TTL_S, call_address(member))
        return member

    def lane(self, node: str) -> tuple[Member, CallConnection] | None:
        """The warm road to ``node``: its kept record and the open call connection to it
        (None: no record kept or fresh, no call channel, or no connection open yet — the
        general road reads the record and opens one)."""
        found = self._routes.get(node)
        if found is None or found[2] is None or found[1] <= time.monotonic():
            return None
        calls = self._calls
        if calls is None:
            if not self.nodes.lean:
                return None
            calls = self._calls = self.channels.calls
        connection = calls.open(found[2])
        return None if connection is None else (found[0], connection)

    def forward(self, node: str, request: pb.InvokeRequest, timeout: float) -> pb.InvokeReply:
        """Send ``request``, which this node forwards along the atom's TAD, to ``node``
        (docs/DESIGN.md §4). On the warm road (:meth:`lane`) as a client's call: the
        request's bytes straight onto the open connection, without the general road's
        look-ups (record, call address, connection, clock); else to the record
        :meth:`route` keeps, through :attr:`nodes`. With tracing on the general road
        carries the trace context."""
        lane = None if tracing.ON else self.lane(node)
        try:
            if lane is not None:
                body = lane[1].call(INVOKE, request.SerializeToString(), timeout)
                reply: pb.InvokeReply = pb.InvokeReply.FromString(body)
                return reply
            return self.nodes.invoke(self.route(node), request, timeout)
        except UnreachableError:
            self.forget_route(node)
            raise

    def forget_route(self, node: str) -> None:
        """``node``'s record may be stale (its address did not answer): read it anew."""
        self._routes.pop(node, None)

    def _watch_routes(self) -> None:
        def changed(_members: object) -> None:
            self._route_epoch += 1
            self._routes.clear()

        with self._route_watch:
            if self._watching:
                return
            # Tried at most once per ROUTE_TTL_S: a name service that cannot answer
            # must not cost every call a wait.
            self._watch_tried = time.monotonic()
            try:
                self.naming.watch_nodes(changed)
            except HermesError:
                return  # not connected yet: records are kept for ROUTE_TTL_S only
            self._watching = True

    def node_address(self, node: str) -> str:
        return self.node(node).address

    def node_stub(self, node: str) -> pbg.SupervisorStub:
        """A raw stub of ``node``'s Supervisor service, for tests that send malformed requests."""
        return self.channels.stub(self.node_address(node), pbg.SupervisorStub)

    def storesite_address(self, guid: str) -> tuple[str, str]:
        """(storesite id, address) of the storesite that knows where ``guid`` is."""
        home, member = self.storesite_member(guid)
        return home, member.address

    def storesite_member(self, guid: str) -> tuple[str, Member]:
        """(storesite id, its record) of the storesite that knows where ``guid`` is."""
        home = self.naming.home(guid) or GUID.parse(guid).home
        member = self.naming.storesites().get(home)
        if member is None:
            raise StoresiteAbsentError(
                f"atom {guid}: its storesite {home!r} is not a live member of the cluster"
            )
        return home, member

    # ------------------------------------------------------------ fallback

    def locate(self, guid: str, timeout: float = 10.0) -> TAD:
        """Ask the atom's storesite where it is (activating it if dormant)."""
        sid, address = self.storesite_address(guid)
        for _ in range(4):  # follow a moved home a few times at most
            storesite = StoresiteClient(address, sid=sid, channels=self.channels)
            where = storesite.locate(guid, timeout=timeout)
            if where.forwarded_to:
                sid = where.forwarded_to
                member = self.naming.storesites().get(sid)
                if member is None:
                    raise UnreachableError(f"atom {guid}: its storesite moved to {sid!r}, not live")
                address = member.address
                continue
            tad = where.tad if where.tad.node else None
            if tad is None:
                raise UnreachableError(f"atom {guid}: storesite {sid} has no location for it")
            self.stash.update(guid, tad)
            return tad
        raise UnreachableError(f"atom {guid}: storesite homes forward in a circle")
