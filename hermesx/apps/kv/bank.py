"""The bank workload on the transactional KV (docs/DESIGN.md §11): transfers and a fixed total.

Accounts ``acct-0000`` … hold balances spread over a store's shards. Worker
threads, each a client with its own coordinator, transfer random amounts
between random accounts; each transfer also writes a marker key
``xfer:<id>`` = ``[from, to, amount]`` in the same transaction. An auditor
reads every account in one read-only transaction, over and over: each
audit must see the same total. At the end, :meth:`Bank.verify` checks that
every acknowledged transfer is applied exactly once: its marker is there,
and the balances are exactly the initial ones moved by the markers found.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hermesx.apps.kv.store import KVStore
from hermesx.apps.kv.txn import TransactionAborted, Transactions
from hermesx.client.api import Client
from hermesx.core.errors import ConfigurationError, HermesError

__all__ = ["Bank", "BankTally"]

log = logging.getLogger(__name__)

MARKER = "xfer:"


@dataclass
class BankTally:
    """What a bank run did; ``errors`` holds every failure that was not a clean abort."""

    acknowledged: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    aborted: int = 0
    audits: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    coordinators: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def as_dict(self) -> dict[str, Any]:
        transfers = len(self.acknowledged)
        tried = transfers + self.aborted + len(self.unknown)
        return {
            "transfers_committed": transfers,
            "transfers_aborted": self.aborted,
            "transfers_unknown": len(self.unknown),
            "abort_rate": self.aborted / tried if tried else 0.0,
            "committed_per_s": transfers / self.elapsed if self.elapsed else 0.0,
            "audits": len(self.audits),
            "audit_totals": sorted(set(self.audits)),
            "errors": len(self.errors),
            "elapsed_s": round(self.elapsed, 3),
        }


class Bank:
    """``accounts`` accounts of ``initial`` each in ``store``."""

    def __init__(self, store: KVStore, accounts: int, initial: int = 100) -> None:
        if not 2 <= accounts <= 10_000:
            raise ConfigurationError(f"account count must be 2 to 10000, not {accounts}")
        self.store = store
        self.accounts = [f"acct-{i:04d}" for i in range(accounts)]
        self.initial = initial
        self.total = accounts * initial

    def open_accounts(self) -> None:
        """Give every account its initial balance."""
        self.store.put_many(dict.fromkeys(self.accounts, self.initial))

    def transfer(self, txs: Transactions, rng: random.Random, marker: str) -> bool:
        """One random transfer with its marker; True when it moved money (False: too poor)."""
        a, b = rng.sample(self.accounts, 2)
        amount = rng.randint(1, 20)
        moved = False

        def move(values: dict[str, Any]) -> dict[str, Any]:
            nonlocal moved
            moved = int(values[a]) >= amount
            if not moved:
                return {}
            return {a: values[a] - amount, b: values[b] + amount, marker: [a, b, amount]}

        txs.run([a, b, marker], move)
        return moved

    def audit(self, txs: Transactions, attempts: int = 200) -> int:
        """The total of every account, read in one read-only transaction."""
        values = txs.read(self.accounts, attempts=attempts)
        return sum(int(v) for v in values.values())

    def run(
        self,
        connect: Callable[[], contextlib.AbstractContextManager[Client]],
        *,
        workers: int,
        seconds: float,
        stop: threading.Event | None = None,
        nodes: Sequence[str] = (),
        tally: BankTally | None = None,
        audit: bool = True,
    ) -> BankTally:
        """Transfers from ``workers`` threads and one auditor for ``seconds`` (or until ``stop``).

        ``connect`` gives each thread its client (a ``Client`` is its own
        context manager, closed at the end). Worker ``i``'s coordinator atom
        goes on ``nodes[i % len(nodes)]`` (any node when empty). ``tally`` (a
        new one when None) fills as the run goes; ``audit``: run the auditor.
        """
        tally = tally if tally is not None else BankTally()
        stop = stop or threading.Event()
        with contextlib.ExitStack() as stack:
            # Each thread's client and coordinator are made first: the
            # clock runs only while transfers do.
            sessions = []
            for index in range(workers + (1 if audit else 0)):
                client = stack.enter_context(connect())
                txs = Transactions(
                    KVStore(client, self.store.name, self.store.shards),
                    node=nodes[index % len(nodes)] if nodes else None,
                )
                tally.coordinators.append(txs.coordinator)
                sessions.append(txs)
            started = time.monotonic()
            deadline = started + seconds

            def running() -> bool:
                return not stop.is_set() and time.monotonic() < deadline

            threads = [
                threading.Thread(
                    target=self._transfers, args=(sessions[i], i, running, tally), daemon=True
                )
                for i in range(workers)
            ]
            if audit:
                threads.append(
                    threading.Thread(
                        target=self._audits, args=(sessions[-1], running, tally), daemon=True
                    )
                )
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            tally.elapsed = time.monotonic() - started
        return tally

    def _transfers(
        self, txs: Transactions, index: int, running: Callable[[], bool], tally: BankTally
    ) -> None:
        rng = random.Random(index)
        n = 0
        while running():
            n += 1
            marker = f"{MARKER}{txs.coordinator}-{n}"
            try:
                moved = self.transfer(txs, rng, marker)
            except TransactionAborted:
                with tally.lock:
                    tally.aborted += 1
                continue
            except HermesError as exc:
                with tally.lock:
                    tally.unknown.add(marker)
                    tally.errors.append(f"transfer {marker}: {exc}")
                continue
            if moved:
                with tally.lock:
                    tally.acknowledged.add(marker)

    def _audits(self, txs: Transactions, running: Callable[[], bool], tally: BankTally) -> None:
        while running():
            try:
                total = self.audit(txs)
            except HermesError as exc:
                log.info("audit gave up this round: %s", exc)
                continue
            with tally.lock:
                tally.audits.append(total)

    def verify(self, tally: BankTally, txs: Transactions) -> list[str]:
        """What is wrong at the end (empty: every acknowledged transfer applied exactly once)."""
        problems = []
        # Decided transactions whose shards were not all told yet (a node died
        # between decision and apply) are applied now by their coordinators.
        for coordinator in tally.coordinators:
            txs.client.call(coordinator, "finish_all")
        markers = {k: v for k, v in self.store.scan(MARKER, limit=10_000)}
        missing = tally.acknowledged - set(markers)
        if missing:
            problems.append(
                f"{len(missing)} acknowledged transfers not applied: {sorted(missing)[:3]}"
            )
        stray = set(markers) - tally.acknowledged - tally.unknown
        if stray:
            problems.append(f"{len(stray)} transfers applied but never acknowledged")
        expected = dict.fromkeys(self.accounts, self.initial)
        for a, b, amount in markers.values():
            expected[a] -= amount
            expected[b] += amount
        balances = txs.read(self.accounts, attempts=200)
        wrong = [k for k in self.accounts if balances[k] != expected[k]]
        if wrong:
            problems.append(
                f"{len(wrong)} balances differ from the applied transfers, e.g. {wrong[0]}: "
                f"{balances[wrong[0]]} != {expected[wrong[0]]}"
            )
        totals = set(tally.audits)
        if totals - {self.total}:
            problems.append(f"audits saw totals {sorted(totals)}, not always {self.total}")
        return problems
