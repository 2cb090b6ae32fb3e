"""Serializable multi-key transactions over a KV store's shards (docs/DESIGN.md §11).

Strict two-phase locking with no waiting, then two-phase commit:

1. **lock** — the client locks every key it reads or writes, shard by shard
   (``lock`` on each ``kvshard``), and gets their values; a key held by
   another transaction aborts this one at once (no lock waits, so no
   deadlock, never a hang). A lock has a lease: a client that vanishes
   before commit loses its locks when the lease ends.
2. **prepare, decide** — the client hands its writes to its coordinator, a
   ``kvtx`` atom (``atoms/kvtx.c``) with every-call checkpoints; it has
   every shard ``prepare`` (the locks become prepared: no lease any more),
   records the decision and replies ``committed`` — durable before the
   reply leaves — or aborts everywhere and fails ``aborted: <why>``.
3. **apply** — ``finish`` has every shard apply the writes and release.

A prepared lock whose transaction lingers (its client or coordinator died
between prepare and apply) is *resolved* by the next client it blocks: the
owner's coordinator applies a recorded decision, or, with none, records the
transaction as aborted (presumed abort) and releases it.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hermesx.apps.kv.store import KVStore, atom_module, check_value
from hermesx.core.errors import (
    ConfigurationError,
    HermesError,
    MethodError,
    OutcomeUnknownError,
)

__all__ = ["DELETE", "TransactionAborted", "Transactions"]

log = logging.getLogger(__name__)

#: A write of this value deletes the key.
DELETE = object()

DEFAULT_LEASE_MS = 10_000
MAX_LEASE_MS = 600_000
#: Shards one read-write transaction may span (its coordinator calls them all at once).
MAX_TX_SHARDS = 32
IDLE_PASSIVATE_SECONDS = 300.0
_PREPARED = re.compile(r"held by prepared transaction (\S+)")


class TransactionAborted(HermesError):
    """A transaction did not commit; the message says why. Nothing of it was applied."""

    kind = "aborted"

    def __init__(self, message: str, *, blocker: str = "") -> None:
        super().__init__(message)
        #: The transaction whose prepared lock stood in the way, if one did.
        self.blocker = blocker


def _aborted(exc: HermesError) -> TransactionAborted | None:
    """The abort a shard or coordinator reported in ``exc``, if it is one."""
    text = str(exc)
    at = text.find("aborted: ")
    if not isinstance(exc, MethodError) or at < 0:
        return None
    why = text[at + len("aborted: ") :]
    found = _PREPARED.search(why)
    return TransactionAborted(why, blocker=found.group(1) if found else "")


def coordinator_of(txid: str) -> str:
    """The coordinator atom's name, which every txid starts with."""
    return txid.rsplit("/", 1)[0]


class Transactions:
    """One client's transactions on ``store``, through a coordinator atom of its own."""

    def __init__(
        self, store: KVStore, *, lease_ms: int = DEFAULT_LEASE_MS, node: str | None = None
    ) -> None:
        if not 1 <= lease_ms <= MAX_LEASE_MS:
            raise ConfigurationError(f"lock lease must be 1 to {MAX_LEASE_MS} ms, not {lease_ms}")
        self.store = store
        self.client = store.client
        self.lease_ms = lease_ms
        self.coordinator = f"kv.{store.name}.tx.{uuid.uuid4().hex[:12]}"
        self.client.create(
            atom_module("kvtx").read_bytes(),
            name=self.coordinator,
            on=node,
            checkpoint="every-call",
            reply_window="4096",
            # A client that is gone leaves its coordinator dormant at the
            # storesite (woken by a resolve), not active on a node forever.
            idle_passivate_seconds=IDLE_PASSIVATE_SECONDS,
        )
        self._seq = itertools.count(1)
        self.committed = 0
        self.aborted = 0

    def _txid(self) -> str:
        return f"{self.coordinator}/{next(self._seq)}"

    # ------------------------------------------------------------ public

    def run(
        self,
        keys: Sequence[str],
        update: Callable[[dict[str, Any]], Mapping[str, Any]],
        *,
        attempts: int = 1,
    ) -> dict[str, Any]:
        """Lock ``keys``, read them, apply ``update(values)``'s writes atomically.

        ``update`` gets {key: value or None} and returns {key: new value or
        :data:`DELETE`} (its keys must be among ``keys``). Returns the writes.
        Up to ``attempts`` tries; the last abort is raised as
        :class:`TransactionAborted`.
        """
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(f"attempts must be at least 1, not {attempts!r}")
        blockers: dict[str, int] = {}
        for attempt in range(attempts):
            try:
                return self._run_once(keys, update)
            except TransactionAborted as exc:
                self.aborted += 1
                if attempt + 1 == attempts:
                    raise
                if exc.blocker:
                    seen = blockers[exc.blocker] = blockers.get(exc.blocker, 0) + 1
                    if seen >= 3:  # it lingers: its client or coordinator died
                        try:
                            self.resolve(exc.blocker, self.store.shards)
                        except HermesError as failed:  # tried again at the next sighting
                            log.info("could not resolve transaction %s: %s", exc.blocker, failed)
                time.sleep(min(0.002 * 2**attempt, 0.05))
        raise AssertionError("unreachable")

    def read(self, keys: Sequence[str], *, attempts: int = 1) -> dict[str, Any]:
        """A read-only transaction: the values of ``keys`` at one serializable point."""
        values: dict[str, Any] = {}

        def keep(found: dict[str, Any]) -> dict[str, Any]:
            values.update(found)
            return {}

        self.run(keys, keep, attempts=attempts)
        return values

    def resolve(self, txid: str, shards: Sequence[str]) -> str:
        """Finish the lingering transaction ``txid``: "committed" or "aborted"."""
        outcome = str(
            self.client.call_with(coordinator_of(txid), "resolve", [[txid, list(shards)]])
        )
        log.info("resolved transaction %s: %s", txid, outcome)
        return outcome

    def pending(self) -> int:
        """Decided transactions of this client not yet applied at every shard."""
        return int(self.client.call(self.coordinator, "pending"))

    def finish_all(self) -> int:
        """Apply every decided transaction not yet applied; returns how many."""
        return int(self.client.call(self.coordinator, "finish_all"))

    # ------------------------------------------------------------ one attempt

    def _run_once(
        self, keys: Sequence[str], update: Callable[[dict[str, Any]], Mapping[str, Any]]
    ) -> dict[str, Any]:
        txid = self._txid()
        groups = self.store.group(keys)
        locked: list[str] = []
        values: dict[str, Any] = {}
        try:
            for shard, shard_keys in groups.items():
                found = self.client.call_with(shard, "lock", [[txid, self.lease_ms, shard_keys]])
                locked.append(shard)
                values.update(zip(shard_keys, found, strict=True))
            writes = dict(update(values))
        except BaseException as exc:
            self._release(txid, locked)
            if isinstance(exc, HermesError) and (aborted := _aborted(exc)) is not None:
                raise aborted from None
            raise
        unknown = set(writes) - set(values)
        if unknown:
            self._release(txid, locked)
            raise TransactionAborted(f"writes to keys it did not lock: {sorted(unknown)[:3]}")
        if not writes:
            self._release(txid, locked)  # read-only: nothing to decide
            return {}
        if len(groups) > MAX_TX_SHARDS:
            self._release(txid, locked)
            raise ConfigurationError(
                f"a transaction may write through at most {MAX_TX_SHARDS} shards, not {len(groups)}"
            )
        self._commit(txid, groups, writes)
        return writes

    def _commit(self, txid: str, groups: dict[str, list[str]], writes: Mapping[str, Any]) -> None:
        parts = []
        for shard, shard_keys in groups.items():
            ops = []
            for key in shard_keys:
                if key in writes:
                    value = writes[key]
                    if value is DELETE:
                        ops.append([key, 1, None])
                    else:
                        check_value(value)
                        ops.append([key, 0, value])
            parts.append([shard, shard_keys, ops])
        try:
            self.client.call_with(self.coordinator, "commit", [[txid, parts]])
        except HermesError as exc:
            aborted = _aborted(exc)
            if aborted is not None:
                raise aborted from None
            # The outcome is unknown (the coordinator's node died and the
            # retries ran out): ask the coordinator, which decides it now.
            try:
                outcome = self.resolve(txid, list(groups))
            except HermesError as again:
                raise OutcomeUnknownError(
                    f"transaction {txid}: outcome unknown ({exc}); resolving failed: {again}"
                ) from again
            if outcome != "committed":
                raise TransactionAborted(f"its commit failed ({exc})") from None
        self.committed += 1
        try:
            self.client.call(self.coordinator, "finish", txid)
        except HermesError as exc:
            # Decided and durable: a reader blocked by its locks resolves it.
            log.warning("transaction %s committed; applying it is left for later: %s", txid, exc)

    def _release(self, txid: str, shards: Sequence[str]) -> None:
        for shard in shards:
            try:
                self.client.call(shard, "abort", txid)
            except HermesError as exc:  # its lease ends it
                log.info("transaction %s: could not release its locks at %s: %s", txid, shard, exc)
