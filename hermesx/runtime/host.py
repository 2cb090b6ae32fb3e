"""What the atom runtime needs from the process that hosts it (docs/DESIGN.md §3).

The runtime (``hermesx.runtime.atom``) implements the ``hx`` imports that stay
inside the atom (reply, log, KV, interrupts, futures). The imports that reach
outside — invoking another atom, sending it a message, naming, moving,
checkpointing — go through an :class:`AtomHost`. The supervisor provides the
real one; :class:`StandaloneHost` serves ``hermesx run`` and unit tests, where
there is no cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hermesx.core.errors import UnreachableError

__all__ = ["AtomHost", "CallContext", "StandaloneHost"]


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling out of an atom, so the host can stop call cycles."""

    caller_guid: str
    # GUIDs of the atoms on the current synchronous call path, caller last.
    chain: tuple[str, ...]
    # Seconds left of the overall deadline of the call being served, if any.
    timeout: float | None = None
    # Atoms of ``chain`` that take incoming calls while blocked (reentrant or
    # daemon), so a call to one of them cannot be stuck behind the chain.
    open_chain: tuple[str, ...] = ()


class AtomHost(Protocol):
    """Syscalls that leave the atom. Every method may raise a HermesError."""

    @property
    def node_name(self) -> str: ...

    def invoke(self, ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        """Blocking, location-independent call; ``target`` is a name or GUID."""
        ...

    def send(self, ctx: CallContext, target: str, code: int, payload: bytes) -> None:
        """One-way message to ``target``'s interrupt table, FIFO per sender/receiver."""
        ...

    def lookup(self, ctx: CallContext, mode: str, pattern: str, scope: str | None) -> list[str]:
        """``mode`` is ``exact``, ``any`` or ``all``; ``scope`` None looks at names,
        else at aliases in that scope. Returns GUID strings."""
        ...

    def alias_add(self, ctx: CallContext, scope: str, alias: str) -> None: ...

    def alias_remove(self, ctx: CallContext, scope: str, alias: str) -> None: ...

    def move_to(self, ctx: CallContext, node: str) -> None:
        """Ask to move the calling atom to ``node`` once its current call ends."""
        ...

    def checkpoint(self, ctx: CallContext) -> None:
        """Ask for a checkpoint of the calling atom once its current call ends."""
        ...


class StandaloneHost:
    """Host for an atom running alone in-process: no cluster to reach."""

    def __init__(self, node_name: str = "local") -> None:
        self._node_name = node_name
        self.move_requests: list[str] = []
        self.checkpoint_requests = 0
        self.aliases: set[tuple[str, str]] = set()

    @property
    def node_name(self) -> str:
        return self._node_name

    def invoke(self, ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        raise UnreachableError(f"atom {target!r}: no cluster here (atom runs standalone)")

    def send(self, ctx: CallContext, target: str, code: int, payload: bytes) -> None:
        raise UnreachableError(f"atom {target!r}: no cluster here (atom runs standalone)")

    def lookup(self, ctx: CallContext, mode: str, pattern: str, scope: str | None) -> list[str]:
        return []

    def alias_add(self, ctx: CallContext, scope: str, alias: str) -> None:
        self.aliases.add((scope, alias))

    def alias_remove(self, ctx: CallContext, scope: str, alias: str) -> None:
        self.aliases.discard((scope, alias))

    def move_to(self, ctx: CallContext, node: str) -> None:
        self.move_requests.append(node)

    def checkpoint(self, ctx: CallContext) -> None:
        self.checkpoint_requests += 1
