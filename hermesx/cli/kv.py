"""`hermesx kv …`: the sharded KV store and its transactions (docs/DESIGN.md §11)."""

from __future__ import annotations

import argparse
import random
import threading
import uuid
from typing import Any

from hermesx.cli.atoms import _json_value, connect
from hermesx.cli.output import emit, progress, table
from hermesx.cli.parser import Verbs
from hermesx.core.errors import HermesError

__all__ = ["register"]


def _open(args: argparse.Namespace) -> Any:
    from hermesx.apps.kv import KVStore

    return KVStore.open(connect(args), args.store)


def cmd_create(args: argparse.Namespace) -> None:
    from hermesx.apps.kv import KVStore

    store = KVStore.create(
        connect(args), args.store, args.shards, durable=not args.cache, nodes=args.on or None
    )
    flavour = "cache (on-request checkpoints)" if args.cache else "durable (every-call)"
    emit(
        args,
        {"store": store.name, "shards": store.shards, "durable": not args.cache},
        f"KV store {store.name!r}: {len(store.shards)} shards, {flavour}",
    )


def cmd_put(args: argparse.Namespace) -> None:
    _open(args).put(args.key, _json_value(args.value, "value"))
    emit(args, {"key": args.key, "ok": True}, "ok")


def cmd_get(args: argparse.Namespace) -> None:
    import json

    value = _open(args).get(args.key)
    emit(args, {"key": args.key, "value": value}, json.dumps(value, default=str))


def cmd_delete(args: argparse.Namespace) -> None:
    existed = _open(args).delete(args.key)
    emit(args, {"key": args.key, "deleted": existed}, "deleted" if existed else "no such key")


def cmd_scan(args: argparse.Namespace) -> None:
    import json

    found = _open(args).scan(args.prefix, limit=args.limit)
    emit(
        args,
        [{"key": k, "value": v} for k, v in found],
        lambda: "\n".join(f"{k}\t{json.dumps(v, default=str)}" for k, v in found) or "(none)",
    )


def cmd_shards(args: argparse.Namespace) -> None:
    rows = _open(args).describe()
    emit(
        args,
        rows,
        lambda: table(
            [(r["index"], r["name"], r["node"] or "-", r["guid"]) for r in rows],
            ["#", "name", "node", "guid"],
        ),
    )


def cmd_rebalance(args: argparse.Namespace) -> None:
    from hermesx.apps.kv import rebalance

    say = progress(args)
    say(f"measuring the load of each shard for {args.window} s")
    moves = rebalance(
        _open(args),
        window=args.window,
        max_moves=args.max_moves,
        on_move=lambda m: say(
            f"moved shard {m.index} ({m.rate:.0f} calls/s) {m.source} -> {m.target}"
        ),
    )
    data = [
        {"index": m.index, "guid": m.guid, "from": m.source, "to": m.target, "rate": m.rate}
        for m in moves
    ]
    emit(
        args,
        {"moves": data},
        lambda: f"{len(moves)} shard(s) moved" if moves else "balanced already: no move",
    )


def cmd_bank(args: argparse.Namespace) -> None:
    from hermesx.apps.kv import KVStore, Transactions
    from hermesx.apps.kv.bank import Bank, BankTally
    from hermesx.client import Client

    say = progress(args)
    client = connect(args)
    name = args.store or f"bank-{uuid.uuid4().hex[:8]}"
    say(f"creating store {name!r}: {args.shards} durable shards, {args.accounts} accounts")
    store = KVStore.create(client, name, args.shards, durable=True)
    bank = Bank(store, args.accounts)
    bank.open_accounts()
    tally = BankTally()
    stop = threading.Event()
    moves = 0

    def mover() -> None:
        nonlocal moves
        rng = random.Random(1)
        while args.migrate_every > 0 and not stop.wait(args.migrate_every):
            shard = rng.choice(store.shards)
            try:
                here = client.locate(shard).node
                client.migrate(shard, rng.choice([n for n in client.nodes() if n != here]))
                moves += 1
            except (HermesError, IndexError) as exc:
                say(f"a move did not happen: {exc}")

    def ticker() -> None:
        while not stop.wait(2.0):
            say(f"{len(tally.acknowledged)} transfers, {len(tally.audits)} audits, {moves} moves")

    helpers = [threading.Thread(target=f, daemon=True) for f in (mover, ticker)]
    for helper in helpers:
        helper.start()
    address = client.address
    try:
        bank.run(
            lambda: Client(address.zk, address.cluster, tls=address.tls),
            workers=args.workers,
            seconds=args.seconds,
            tally=tally,
        )
    finally:
        stop.set()
    problems = bank.verify(tally, Transactions(store))
    data = {**tally.as_dict(), "moves": moves, "store": name, "problems": problems}
    emit(
        args,
        data,
        lambda: (
            f"{data['transfers_committed']} transfers committed "
            f"({data['committed_per_s']:.1f}/s), abort rate {data['abort_rate']:.0%}, "
            f"{data['audits']} audits all saw {data['audit_totals']}, {moves} moves\n"
            + (
                "every acknowledged transfer applied exactly once"
                if not problems
                else "\n".join(problems)
            )
        ),
    )
    if problems:
        raise HermesError(f"bank invariant broken: {problems[0]}")


def register(verbs: Verbs) -> None:
    """Add the `hermesx kv` verbs."""
    p = verbs.add("create", cmd_create, "create a sharded KV store")
    p.add_argument("store")
    p.add_argument("--shards", type=int, default=4, help="number of shards (1-1024)")
    p.add_argument("--cache", action="store_true", help="checkpoint on request only (a cache)")
    p.add_argument("--on", action="append", metavar="NODE", help="nodes to hold the shards")
    p = verbs.add("put", cmd_put, "set a key to a JSON value")
    p.add_argument("store")
    p.add_argument("key")
    p.add_argument("value", help="JSON value")
    for verb, func, help in (
        ("get", cmd_get, "the value of a key (null when absent)"),
        ("delete", cmd_delete, "delete a key"),
    ):
        p = verbs.add(verb, func, help)
        p.add_argument("store")
        p.add_argument("key")
    p = verbs.add("scan", cmd_scan, "keys starting with a prefix, sorted, and their values")
    p.add_argument("store")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--limit", type=int, default=100)
    p = verbs.add("shards", cmd_shards, "the shards of a store and where they are")
    p.add_argument("store")
    p = verbs.add("rebalance", cmd_rebalance, "move shards toward even load (calls/s per node)")
    p.add_argument("store")
    p.add_argument("--window", type=float, default=2.0, help="seconds to measure the load over")
    p.add_argument("--max-moves", type=int, default=None)
    p = verbs.add("bank", cmd_bank, "the bank workload: transfers, audits, moves; checks the total")
    p.add_argument("--store", help="store name (default: a new bank-XXXXXXXX)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--accounts", type=int, default=16)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument(
        "--migrate-every", type=float, default=2.0, help="seconds between moves (0: none)"
    )
