"""The chains of busy atoms kept in memory, so that a chain's cut need not read it back.

See docs/DESIGN.md §6 ("Incremental checkpoints").

A chain's cut (:func:`storesite.deltas.put_delta`, once in
:data:`~storesite.chain.MAX_CHAIN` deltas) composes the new whole snapshot
from the chain's anchor and every delta on it. Read back from the store,
that is the anchor's snapshot decoded (a counter's 1,024 reply records built
one by one) and every delta record read, CRC-checked and decoded again,
though the storesite had each of them decoded in hand when it arrived: ~7 ms
a cut, a tenth of the storesite's CPU per durable call
(docs/PERFORMANCE.md "Durable calls"). :class:`ChainMemory` keeps, for the
atoms whose chains it saw cut, the state that cut wrote and the deltas
stored on it since, as they were decoded and checked on arrival; the next
cut composes from those.

What it holds is only ever what the store holds: a chain is entered when its
anchor's write is durable, a delta added when its write is durable and it
was stored on the chain's last checkpoint (by name), and a cut takes the
chain only when its anchor's slot, its length and its last checkpoint's name
(a CRC-32 chained through every delta from the anchor's, storesite.chain)
are those of the record the store names as the delta's base. Anything else —
a whole checkpoint from the node, a move, a chain dropped to keep the budget
— leaves it unused, and the cut reads the store as before; a home that
moves away or back (storesite.moves) drops it with the records. The callers hold
the atom's lock, so one atom's chain changes one step at a time.

Memory is bounded: at most :data:`DEFAULT_BUDGET` bytes in all, counted as
the anchor's encoded snapshot and what each delta decodes to, plus
:data:`ITEM_COST` per item of either (a reply record, a KV entry, a memory
run or chunk: its Python objects, which a state of many small items holds
several times its bytes in); the least recently used chains are dropped
first, and a chain that alone would take more than a quarter of the budget
is not kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from hermesx.core.delta import StateDelta, compose_chain
from hermesx.core.snapshot import AtomState
from storesite.chain import Link, decoded_size

__all__ = ["DEFAULT_BUDGET", "ITEM_COST", "ChainMemory"]

# Bytes of chains kept in all: a counter's chain of 64 deltas is ~0.8 MB counted so.
DEFAULT_BUDGET = 32 * 2**20
# What a decoded item (reply record, KV entry, memory run) costs in Python objects
# beyond its bytes, roughly: a tuple or a record and one or two bytes objects.
ITEM_COST = 160


@dataclass(slots=True)
class _Chain:
    anchor: int  # the slot of the whole record the chain starts from
    state: AtomState  # what that record holds
    name: int  # the name of the chain's last checkpoint
    size: int  # bytes counted against the budget
    deltas: list[StateDelta] = field(default_factory=list)


class ChainMemory:
    """Chains of recently cut atoms: their anchor's state and the deltas stored since."""

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self._budget = budget
        self._lock = threading.Lock()
        self._chains: OrderedDict[str, _Chain] = OrderedDict()
        self._held = 0
        self.cuts_from_memory = 0  # cuts composed from a kept chain (for tests, status)

    @property
    def held(self) -> int:
        """Bytes counted against the budget now."""
        return self._held

    def cut(self, guid: str, number: int, name: int, state: AtomState, snapshot_bytes: int) -> None:
        """The whole record ``name`` in slot ``number`` of ``guid``, holding ``state``
        (``snapshot_bytes`` encoded), is durable: a new chain starts from it."""
        items = len(state.replies) + len(state.kv) + len(state.memory)
        size = snapshot_bytes + ITEM_COST * items
        with self._lock:
            self._drop(guid)
            if size <= self._budget // 4:
                self._chains[guid] = _Chain(number, state, name, size)
                self._held += size
                self._trim()

    def stored(self, guid: str, base: int, name: int, data: bytes, delta: StateDelta) -> None:
        """The delta ``data`` (decoded: ``delta``) on the checkpoint named ``base`` is
        durable, named ``name``: the kept chain that ends at ``base`` grows by it; one
        that ends elsewhere is no longer the store's, and is dropped."""
        with self._lock:
            chain = self._chains.get(guid)
            if chain is None:
                return
            if chain.name != base:
                self._drop(guid)
                return
            items = (
                len(delta.chunks)
                + len(delta.kv_put)
                + len(delta.kv_delete)
                + len(delta.replies_added)
            )
            grown = decoded_size(data, len(delta.chunks)) + ITEM_COST * items
            if chain.size + grown > self._budget // 4:
                self._drop(guid)
                return
            chain.deltas.append(delta)
            chain.name = name
            chain.size += grown
            self._held += grown
            self._chains.move_to_end(guid)
            self._trim()

    def composed(self, guid: str, link: Link, delta: StateDelta) -> AtomState | None:
        """The state ``delta`` makes of the checkpoint whose link is ``link`` (the latest
        record, due a whole snapshot), from the kept chain; None when none is kept for
        exactly that record. StorageError when ``delta`` does not fit it."""
        with self._lock:
            chain = self._chains.get(guid)
            if chain is None or (chain.anchor, len(chain.deltas), chain.name) != (
                link.anchor,
                link.length,
                link.name,
            ):
                return None
            anchor, deltas = chain.state, [*chain.deltas, delta]
        state = compose_chain(anchor, deltas)
        self.cuts_from_memory += 1
        return state

    def forget(self, guid: str) -> None:
        """Drop ``guid``'s chain (its records were deleted)."""
        with self._lock:
            self._drop(guid)

    def _drop(self, guid: str) -> None:
        chain = self._chains.pop(guid, None)
        if chain is not None:
            self._held -= chain.size

    def _trim(self) -> None:
        while self._held > self._budget:
            _, chain = self._chains.popitem(last=False)
            self._held -= chain.size
