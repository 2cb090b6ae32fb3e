"""What every role of a node works with: :class:`NodeContext` (docs/DESIGN.md §4).

The roles of a node — dispatch, creation, both sides of a move, checkpoints,
passivation, test hooks — share a handful of parts: the node's configuration,
its catalog of atoms and its stash, its fencing (may it serve, as which
incarnation), the name service and the invoker, the atoms' storesites, and
the test hooks' pauses. The supervisor builds them once and hands each role
this record; what a role needs beyond it, it is given by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from hermesx.node.budget import AtomBudget
from hermesx.node.catalog import Catalog
from hermesx.node.config import NodeConfig
from hermesx.node.fencing import Fencing
from hermesx.node.storage import AtomStoresites
from hermesx.node.testhooks import TestHooks
from hermesx.routing.invoker import Invoker
from hermesx.routing.naming import Naming
from hermesx.routing.stash import Stash

__all__ = ["NodeContext"]


@dataclass(frozen=True, slots=True)
class NodeContext:
    config: NodeConfig
    catalog: Catalog
    stash: Stash
    fencing: Fencing
    naming: Naming
    invoker: Invoker
    storesites: AtomStoresites
    hooks: TestHooks
    budget: AtomBudget

    @property
    def name(self) -> str:
        """The node's name."""
        return self.config.name

    def pause(self, step: str) -> None:
        """Pause at ``step`` if a test asked to."""
        self.hooks.pause(step)
