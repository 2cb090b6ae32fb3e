"""A final checkpoint whose outcome is unknown is settled by the storesite's answer only
(hermesx/node/passivation.py, docs/DESIGN.md §5).

The first final checkpoint may have been written with its answer lost. A retry that
is never sent (the storesite no longer registered: it died, and its session ended)
says nothing about the first: the atom thawed and served here while the record,
once the storesite was back, said dormant, and the next caller had it activated on
another node: two copies. It stays frozen until a retry is answered.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from hermesx.core.errors import CallTimeoutError, MigrationError
from hermesx.core.identity import TAD
from hermesx.node.passivation import Passivation
from hermesx.routing.peers import StoresiteAbsentError

GUID = "s1:" + "f" * 32


class _Active:
    def __init__(self) -> None:
        self.guid, self.tad, self.frozen_generation = GUID, TAD("n1", 1), 3
        self.thawed = 0

    def freeze(self, wait: float) -> bytes:
        return b"snapshot"

    def thaw(self) -> None:
        self.thawed += 1


def _node(answers: list[BaseException | None]) -> tuple[Passivation, _Active, Any]:
    """A Passivation whose storesite answers the final checkpoints with ``answers``."""
    active = _Active()

    def passivated(guid: str, tad: TAD, snapshot: bytes, *, generation: int) -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    dropped: list[Any] = []

    def drop(atom: Any, forward_to: TAD | None) -> None:
        dropped.append(atom)
        atoms.pop(atom.guid, None)

    atoms = {GUID: active}
    storesites = SimpleNamespace(passivated=passivated, ship_logs=lambda guid: None)
    catalog = SimpleNamespace(atoms=atoms, drop=drop)
    ctx: Any = SimpleNamespace(storesites=storesites, catalog=catalog)
    return Passivation(ctx), active, dropped


def test_a_retry_never_sent_leaves_the_atom_frozen_until_one_is_answered() -> None:
    lost = CallTimeoutError("Passivated did not answer in time")
    absent = StoresiteAbsentError("storesite s1 is not registered")
    passivation, active, dropped = _node([lost, absent, absent, None])
    with pytest.raises(CallTimeoutError):
        passivation.passivate(active)
    for _ in range(2):
        passivation.settle(float("inf"))
        assert (active.thawed, dropped) == (0, [])
    passivation.settle(float("inf"))
    assert (active.thawed, dropped) == (0, [active])


def test_a_retry_refused_because_the_record_moved_on_drops_the_copy() -> None:
    lost = CallTimeoutError("Passivated did not answer in time")
    past = MigrationError("stale passivation: the atom is at n2@2 now")
    passivation, active, dropped = _node([lost, past])
    with pytest.raises(CallTimeoutError):
        passivation.passivate(active)
    passivation.settle(float("inf"))
    assert (active.thawed, dropped) == (0, [active])
