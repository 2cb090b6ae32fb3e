"""The sharded KV store and the transactional KV store on atoms (docs/DESIGN.md §11).

- :class:`KVStore` (``store.py``): shard atoms placed by a consistent-hashing
  ring (``ring.py``), get / put / delete / scan;
- :class:`Transactions` (``txn.py``): serializable multi-key transactions,
  two-phase commit through a coordinator atom;
- :func:`rebalance` (``rebalance.py``): moves shards toward even load;
- ``bank.py``: the bank workload (transfers, an invariant total).
"""

from hermesx.apps.kv.rebalance import Move, rebalance
from hermesx.apps.kv.ring import Ring
from hermesx.apps.kv.store import MAX_KEY_BYTES, MAX_SHARDS, MAX_VALUE_BYTES, KVStore
from hermesx.apps.kv.txn import DELETE, TransactionAborted, Transactions

__all__ = [
    "DELETE",
    "MAX_KEY_BYTES",
    "MAX_SHARDS",
    "MAX_VALUE_BYTES",
    "KVStore",
    "Move",
    "Ring",
    "TransactionAborted",
    "Transactions",
    "rebalance",
]
