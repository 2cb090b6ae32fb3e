"""The values hermesx's public API hands back (docs/DESIGN.md §4, §5, §8).

:class:`~hermesx.client.Client` calls return these, never wire messages:
what a call returned and the path it took (:class:`InvokeOutcome`,
:class:`Hop`), where an atom is (:class:`Location`), what a move did
(:class:`MigrationResult`) and what a node reports of itself
(:class:`NodeStatus`). They live in the core because the layers that build
them (the invoker, the converters of the wire) sit below the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hermesx.core.identity import TAD

__all__ = ["DrainResult", "Hop", "InvokeOutcome", "Location", "MigrationResult", "NodeStatus"]


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of a traced call: the ``node`` (or ``"storesite"``) it passed and what happened.

    ``event`` is ``"enter"``, ``"forward"``, ``"moved"``, ``"storesite"``,
    ``"broken"`` or ``"ran"``; ``tad`` is the TAD the place held for the atom
    when the call passed (None when it held none); ``detail`` says why, in words.
    """

    node: str
    event: str
    tad: TAD | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class InvokeOutcome:
    """What a call returned: the msgpack ``result``, the atom's ``guid`` and newest ``tad``.

    ``trace`` holds the hops the call took when it was made with ``trace=True``.
    """

    result: bytes
    guid: str
    tad: TAD | None
    trace: tuple[Hop, ...] = ()


@dataclass(frozen=True, slots=True)
class Location:
    """Where an atom is: the ``node`` it is active on at ``age``, and its home ``storesite``."""

    guid: str
    node: str
    age: int
    storesite: str

    def as_dict(self) -> dict[str, Any]:
        return {"guid": self.guid, "node": self.node, "age": self.age, "storesite": self.storesite}


@dataclass(frozen=True, slots=True)
class DrainResult:
    """A finished drain of ``node`` (docs/DESIGN.md §5 "Drain"): atoms moved and left behind.

    ``failures`` has one line per atom left, ``"<guid>: <why>"``.
    """

    node: str
    moved: int
    remaining: int
    failures: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """A finished move: the atom's new ``tad``, the bytes of state sent, and its timings.

    ``held_ms`` is how long calls to the atom were held while it moved;
    ``total_ms`` the whole move, as the source node measured them.
    """

    guid: str
    tad: TAD
    state_bytes: int
    held_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What a node reports of itself: its atoms, its stash, its process and its load."""

    name: str
    active_atoms: int
    stash_entries: int
    pid: int
    rss_bytes: int
    tags: tuple[str, ...]
    atom_calls: int  # invocations waiting for or running in an atom there
    draining: bool = False  # out of service: takes no new atoms (docs/DESIGN.md §5 "Drain")
    max_atoms: int = 0  # the most atoms it holds (its budget, docs/DESIGN.md §3)
    atom_room: int | None = None  # how many more it takes now (None: not said)
