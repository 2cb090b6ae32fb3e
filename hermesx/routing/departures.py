"""Calls in flight to a node end as soon as its registration ends (docs/DESIGN.md §6).

A node whose name-service session expired is fenced: it runs none of the
calls waiting in its socket and makes no durable or outside effect of one it
was running. So a caller need not wait out its deadline on such a node (a
frozen one holds calls until then): closing the node's channel ends those
calls at once, and the invoker goes on from the atom's storesite with the
same request id (:meth:`hermesx.routing.invoker.Invoker._rpc_at`).
"""

from __future__ import annotations

from hermesx.routing.naming import Member, Naming
from hermesx.rpc.node_client import call_address
from hermesx.rpc.wire import ChannelPool

__all__ = ["watch_departures"]


def watch_departures(naming: Naming, channels: ChannelPool) -> None:
    """Close the channel and call connection of every node that leaves the cluster; call
    once ``naming`` started."""
    addresses: set[str] = set()

    def changed(members: dict[str, Member]) -> None:
        nonlocal addresses
        live = {member.address for member in members.values()}
        live |= {a for a in map(call_address, members.values()) if a is not None}
        gone, addresses = addresses - live, live
        for address in gone:
            channels.drop(address)

    naming.watch_nodes(changed)
