"""Which node an atom goes to: the one ranking of nodes (docs/DESIGN.md §4 step 4, §5 "Drain", §6).

Storesites use it to place a dormant or recovered atom, a draining node to
move its atoms away. Among the live nodes that are in service (not
draining) and carry every tag the atom asks for, prefer the least loaded
(fewest active atoms, as the node's Status reports), ties broken by name so
the choice is predictable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hermesx.rpc.node_client import Member

__all__ = ["DRAINING", "in_service", "rank_nodes"]

DRAINING = "draining"
"""The key of a node's registration data set while it is out of service."""


def in_service(member: Member) -> bool:
    """False for a node that is draining: it takes no new atoms."""
    return not member.data.get(DRAINING)


def rank_nodes(
    nodes: Mapping[str, Member],
    tags: Iterable[str],
    loads: Mapping[str, int | None],
    *,
    exclude: Iterable[str] = (),
) -> list[Member]:
    """Candidate nodes for an atom, best first.

    Nodes without every tag in ``tags``, draining or named in ``exclude`` are
    left out; nodes whose load is unknown (``None``: they did not answer) go last.
    """
    wanted = set(tags)
    skip = set(exclude)
    fitting = [
        member
        for name, member in nodes.items()
        if name not in skip and wanted.issubset(member.tags) and in_service(member)
    ]

    def key(member: Member) -> tuple[int, int, str]:
        load = loads.get(member.name)
        return (1, 0, member.name) if load is None else (0, load, member.name)

    return sorted(fitting, key=key)
