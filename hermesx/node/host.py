"""The syscalls of a node's atoms that leave the atom (atoms/ABI.md, docs/DESIGN.md §4).

:class:`NodeHost` is the :class:`~hermesx.runtime.host.AtomHost` of every
atom on a node: calls and sends to other atoms (through the node's invoker,
messages from one sender in order), name lookups and aliases, and the
requests an atom makes about itself (move there, checkpoint now), which the
node carries out after the current call.
"""

from __future__ import annotations

import threading

from hermesx.core.errors import MigrationError, NameNotFoundError
from hermesx.core.identity import validate_name
from hermesx.node.context import NodeContext
from hermesx.rpc.atom_meta import tags_refusal
from hermesx.runtime.host import CallContext

__all__ = ["NodeHost"]


class NodeHost:
    """The AtomHost of this node's atoms."""

    def __init__(self, ctx: NodeContext) -> None:
        self._node = ctx.name
        self._cluster = ctx.config.cluster
        self._invoker = ctx.invoker
        self._naming = ctx.naming
        self._catalog = ctx.catalog
        self._seq_lock = threading.Lock()
        self._send_seq: dict[tuple[str, str], int] = {}
        # One lock per sender so its messages leave in order (FIFO per pair).
        self._send_locks: dict[str, threading.Lock] = {}

    @property
    def node_name(self) -> str:
        return self._node

    def _outgoing(self, ctx: CallContext) -> None:
        """Count a call or send leaving the caller: its call is not read-only
        (docs/DESIGN.md §6)."""
        active = self._catalog.atoms.get(ctx.caller_guid)
        if active is not None:
            active.outgoing += 1

    def invoke(self, ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        self._outgoing(ctx)
        outcome = self._invoker.invoke(
            target, method, args, chain=ctx.chain, timeout=ctx.timeout, open_chain=ctx.open_chain
        )
        return outcome.result

    def send(self, ctx: CallContext, target: str, code: int, payload: bytes) -> None:
        self._outgoing(ctx)
        with self._seq_lock:
            lock = self._send_locks.setdefault(ctx.caller_guid, threading.Lock())
        with lock:
            # The seq orders a sender's messages; copies are told apart by the request id
            # the invoker gives each message (the seq restarts when the sender moves).
            key = (ctx.caller_guid, target)
            seq = self._send_seq.get(key, 0) + 1
            self._send_seq[key] = seq
            self._invoker.send(
                target,
                code,
                payload,
                sender=ctx.caller_guid,
                seq=seq,
                chain=ctx.chain,
                timeout=ctx.timeout,
            )

    def lookup(self, ctx: CallContext, mode: str, pattern: str, scope: str | None) -> list[str]:
        naming = self._naming
        if mode == "exact":
            if scope is None:
                try:
                    return [naming.resolve(pattern)]
                except NameNotFoundError:
                    return []
            return sorted(naming.aliases(scope).get(pattern, []))
        return naming.lookup(pattern, scope=scope, all=(mode == "all"))

    def alias_add(self, ctx: CallContext, scope: str, alias: str) -> None:
        self._naming.alias_add(scope, alias, ctx.caller_guid)

    def alias_remove(self, ctx: CallContext, scope: str, alias: str) -> None:
        self._naming.alias_remove(scope, alias, ctx.caller_guid)

    def move_to(self, ctx: CallContext, node: str) -> None:
        """Refuse at once what the move would refuse later, so the atom hears it (ABI.md)."""
        validate_name(node, "node name")
        active = self._catalog.atoms.get(ctx.caller_guid)
        if active is None or node == self._node:
            return
        members = self._naming.nodes()
        if node not in members:
            raise NameNotFoundError(
                f"node {node!r} is not a live member of cluster {self._cluster}"
            )
        refusal = tags_refusal(ctx.caller_guid, node, active.meta.tags, members[node].tags)
        if refusal:
            raise MigrationError(refusal)
        active.move_request = node

    def checkpoint(self, ctx: CallContext) -> None:
        active = self._catalog.atoms.get(ctx.caller_guid)
        if active is not None:
            active.checkpoint_request = True
