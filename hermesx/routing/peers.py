"""Where the invoker's calls go: live nodes, the storesite that knows an atom (docs/DESIGN.md §4).

:class:`Peers` is the part of the :class:`~hermesx.routing.invoker.Invoker`
that finds whom to call: a live node by name (through the name service), the
atom's storesite, and — the single fallback point of a broken forwarding
chain — where the storesite says the atom is (:meth:`Peers.locate`), which
it writes into the stash. Calls themselves go through :attr:`Peers.nodes`
(gRPC, or the node's call channel where it has one).
"""

from __future__ import annotations

from hermesx.core.errors import UnreachableError
from hermesx.core.identity import GUID, TAD
from hermesx.routing.naming import Member, Naming
from hermesx.routing.stash import Stash
from hermesx.rpc.node_client import NodeClient
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.storesite_client import StoresiteClient
from hermesx.rpc.wire import ChannelPool

__all__ = ["Peers", "StoresiteAbsentError"]


class StoresiteAbsentError(UnreachableError):
    """The atom's storesite is not registered in the name service."""


class Peers:
    """Live nodes and storesites of the cluster, and the stash of where atoms are."""

    def __init__(self, naming: Naming, channels: ChannelPool, stash: Stash | None = None) -> None:
        self.naming = naming
        self.channels = channels
        self.nodes = NodeClient(channels)
        self.stash = stash if stash is not None else Stash()

    # ------------------------------------------------------------ addresses

    def node(self, node: str) -> Member:
        """The live member named ``node``, to call through :attr:`nodes`."""
        member = self.naming.nodes().get(node)
        if member is None:
            raise UnreachableError(f"node {node!r} is not a live member of the cluster")
        return member

    def node_address(self, node: str) -> str:
        return self.node(node).address

    def node_stub(self, node: str) -> pbg.SupervisorStub:
        """A raw stub of ``node``'s Supervisor service, for tests that send malformed requests."""
        return self.channels.stub(self.node_address(node), pbg.SupervisorStub)

    def storesite_address(self, guid: str) -> tuple[str, str]:
        """(storesite id, address) of the storesite that knows where ``guid`` is."""
        home = self.naming.home(guid) or GUID.parse(guid).home
        member = self.naming.storesites().get(home)
        if member is None:
            raise StoresiteAbsentError(
                f"atom {guid}: its storesite {home!r} is not a live member of the cluster"
            )
        return home, member.address

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
