"""The atom's memory cap: linear memory, KV and reply table together (docs/DESIGN.md §3).

Host-side state counts toward the cap: KV entries by their key and value bytes
plus :data:`KV_ENTRY_OVERHEAD`, reply-table entries by their payload plus
:data:`REPLY_ENTRY_OVERHEAD`. The store's memory limit follows what they leave,
so ``memory.grow`` in the atom fails (-1) where the cap is reached.
"""

from __future__ import annotations

from hermesx.runtime.base import AtomBase
from hermesx.runtime.modules import MAX_TABLE_ELEMENTS, PAGE

__all__ = ["KV_ENTRY_OVERHEAD", "REPLY_ENTRY_OVERHEAD", "AtomMemory"]

KV_ENTRY_OVERHEAD = 64
REPLY_ENTRY_OVERHEAD = 128


class AtomMemory(AtomBase):
    """What the atom's host-side state counts toward its memory cap."""

    def _host_bytes(self) -> int:
        """What the atom's KV and reply table count toward its memory cap."""
        replies = self.replies
        return self._kv_bytes + replies.payload_bytes + len(replies) * REPLY_ENTRY_OVERHEAD

    def _usage_text(self) -> str:
        return (
            f"linear memory {self._inst.memory_size} + KV {self._kv_bytes} + "
            f"reply table {self._host_bytes() - self._kv_bytes} bytes"
        )

    def _limit_memory(self, records: int = -1) -> None:
        """Linear memory may grow only into what the KV and the reply table leave.

        ``records``: how many records the reply table holds, when the caller knows
        (what its ``record`` returned; -1: counted here)."""
        replies = self.replies
        if records < 0:
            records = len(replies)
        held = self._kv_bytes + replies.payload_bytes + records * REPLY_ENTRY_OVERHEAD
        allowance = self._memory_cap - held
        allowance = allowance - allowance % PAGE if allowance > 0 else 0
        if allowance != self._memory_allowance:
            self._memory_allowance = allowance
            self._store.set_limits(memory_size=allowance, table_elements=MAX_TABLE_ELEMENTS)
