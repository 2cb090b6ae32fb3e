"""The sharded KV store: shard atoms placed by a consistent-hashing ring (docs/DESIGN.md §11).

A store named ``S`` is ``N`` ``kvshard`` atoms (``atoms/kvshard.c``), named
``kv.S.0000`` … and carrying the alias ``shard-0000`` … in the scope
``kv.S``: the name service holds the store (its shards and so its ring);
:class:`KVStore` finds them by scoped alias and calls them by GUID. A
*durable* store's shards checkpoint in every call that changes them, before
the reply leaves (an acknowledged put survives the death of its node; a read
costs no checkpoint); a *cache* store's shards checkpoint on request only.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hermesx.apps.kv.ring import Ring
from hermesx.client.api import Client
from hermesx.core.errors import ConfigurationError, HermesError, NameNotFoundError
from hermesx.core.identity import validate_name
from hermesx.runtime.build import SDK_DIR, build_atom

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_SCAN",
    "MAX_SHARDS",
    "MAX_VALUE_BYTES",
    "KVStore",
    "atom_module",
    "check_key",
    "check_value",
]

MAX_SHARDS = 1024
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 256 * 1024
MAX_SCAN = 10_000

_build_lock = threading.Lock()


def atom_module(stem: str) -> pathlib.Path:
    """The built module of the SDK atom ``stem`` (``kvshard``, ``kvtx``), built when missing."""
    src = SDK_DIR / f"{stem}.c"
    out = SDK_DIR / "build" / f"{stem}.wasm"
    with _build_lock:
        if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
            build_atom(src, out)
    return out


def check_key(key: object, what: str = "key") -> str:
    """``key`` if it is a str of at most :data:`MAX_KEY_BYTES` bytes (UTF-8), else raise."""
    if not isinstance(key, str):
        raise ConfigurationError(f"{what} must be a str, not {type(key).__name__}")
    size = len(key.encode())
    if size > MAX_KEY_BYTES:
        raise ConfigurationError(f"{what} is {size} bytes; the limit is {MAX_KEY_BYTES}")
    return key


def check_value(value: Any) -> bytes:
    """The msgpack bytes of ``value``, if within :data:`MAX_VALUE_BYTES`, else raise."""
    from hermesx.core import codec

    packed = codec.pack(value)
    if len(packed) > MAX_VALUE_BYTES:
        raise ConfigurationError(
            f"value is {len(packed)} bytes (msgpack); the limit is {MAX_VALUE_BYTES}"
        )
    return packed


def _check_store_name(name: str) -> str:
    validate_name(name, "store name")
    if len(name) > 64:
        raise ConfigurationError(f"store name {name[:20]!r}… is longer than 64 characters")
    return name


def shard_name(store: str, index: int) -> str:
    return f"kv.{store}.{index:04d}"


def shard_alias(index: int) -> str:
    return f"shard-{index:04d}"


def shard_scope(store: str) -> str:
    return f"kv.{store}"


class KVStore:
    """A sharded KV store of the cluster ``client`` talks to; open one with :meth:`open`."""

    def __init__(self, client: Client, name: str, shards: Sequence[str]) -> None:
        self.client = client
        self.name = name
        #: The shards' GUIDs, by index.
        self.shards: list[str] = list(shards)
        self.ring = Ring(name, len(self.shards))

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls,
        client: Client,
        name: str,
        shards: int,
        *,
        durable: bool = True,
        nodes: Sequence[str] | None = None,
    ) -> KVStore:
        """Create the store ``name`` with ``shards`` shards spread over ``nodes`` (all live ones).

        ``durable``: a checkpoint in every call that changes a shard (nothing
        acknowledged is lost when a node dies); else on-request (a cache: a
        node's death loses what its shards held since their last checkpoint).
        """
        _check_store_name(name)
        if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
            raise ConfigurationError(f"shard count must be 1 to {MAX_SHARDS}, not {shards!r}")
        if client.lookup(".*", scope=shard_scope(name), all=True):
            raise ConfigurationError(f"KV store {name!r} exists already")
        targets = sorted(nodes) if nodes else sorted(client.nodes())
        if not targets:
            raise ConfigurationError("no live node to hold the shards")
        wasm = atom_module("kvshard").read_bytes()
        guids = []
        for index in range(shards):
            guids.append(
                client.create(
                    wasm,
                    name=shard_name(name, index),
                    on=targets[index % len(targets)],
                    aliases=[f"{shard_scope(name)}={shard_alias(index)}"],
                    # A durable shard asks for a checkpoint in each call that
                    # changes it (reads are free); a cache never does.
                    checkpoint="on-request",
                    init=durable,
                    reply_window="4096",
                )
            )
        return cls(client, name, guids)

    @classmethod
    def open(cls, client: Client, name: str) -> KVStore:
        """The existing store ``name``, its shards found by their aliases in the name service."""
        _check_store_name(name)
        scope = shard_scope(name)
        count = len(client.lookup(".*", scope=scope, all=True))
        if count == 0:
            raise NameNotFoundError(f"no KV store {name!r} (no shard has an alias in {scope})")
        guids = []
        for index in range(count):
            found = client.lookup(shard_alias(index), scope=scope)
            if not found:
                raise NameNotFoundError(
                    f"KV store {name!r} is incomplete: shard {index} of {count} is missing"
                )
            guids.append(found[0])
        return cls(client, name, guids)

    # ------------------------------------------------------------ placement

    def shard_of(self, key: str) -> str:
        """The GUID of the shard holding ``key``."""
        return self.shards[self.ring.shard_of(key)]

    def shard_name(self, key: str) -> str:
        """The name of the shard holding ``key`` (``kv.<store>.<index>``)."""
        return shard_name(self.name, self.ring.shard_of(check_key(key)))

    def group(self, keys: Iterable[str]) -> dict[str, list[str]]:
        """``keys`` by the GUID of their shard, each list sorted."""
        by_shard: dict[str, list[str]] = {}
        for key in keys:
            by_shard.setdefault(self.shard_of(check_key(key)), []).append(key)
        return {shard: sorted(set(ks)) for shard, ks in sorted(by_shard.items())}

    # ------------------------------------------------------------ operations

    def get(self, key: str) -> Any:
        """The value of ``key``, or None."""
        return self.client.call(self.shard_of(check_key(key)), "get", key)

    def put(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value`` (any msgpack value)."""
        check_value(value)
        self.client.call_with(self.shard_of(check_key(key)), "put", [[key, value]])

    def put_many(self, items: Mapping[str, Any], batch: int = 500) -> None:
        """Set many keys: one call (and one checkpoint) per shard and ``batch`` keys."""
        for shard, keys in self.group(items).items():
            for start in range(0, len(keys), batch):
                pairs = [[k, items[k]] for k in keys[start : start + batch]]
                for _, value in pairs:
                    check_value(value)
                self.client.call_with(shard, "mput", [pairs])

    def delete(self, key: str) -> bool:
        """Delete ``key``; True when it existed."""
        return bool(self.client.call(self.shard_of(check_key(key)), "delete", key))

    def scan(self, prefix: str = "", limit: int = 1000) -> list[tuple[str, Any]]:
        """(key, value) of the keys starting with ``prefix``, sorted, at most ``limit``."""
        check_key(prefix, "scan prefix")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_SCAN:
            raise ConfigurationError(f"scan limit must be 0 to {MAX_SCAN}, not {limit!r}")
        found: list[tuple[str, Any]] = []
        for shard in self.shards:
            found.extend(
                (str(k), v) for k, v in self.client.call_with(shard, "scan", [[prefix, limit]])
            )
        found.sort(key=lambda kv: kv[0])
        return found[:limit]

    def count(self) -> int:
        """How many keys the store holds."""
        return sum(int(self.client.call(shard, "count")) for shard in self.shards)

    def shard_stats(self) -> dict[str, int]:
        """Calls each shard has served since it was created, by GUID."""
        stats = {}
        for shard in self.shards:
            served, _now = self.client.call(shard, "stats")
            stats[shard] = int(served)
        return stats

    def locks(self) -> int:
        """How many keys transactions hold locked, over all shards."""
        return sum(int(self.client.call(shard, "locks")) for shard in self.shards)

    def describe(self) -> list[dict[str, Any]]:
        """Each shard: index, name, GUID and the node holding it ("" when dormant or unknown)."""
        rows = []
        for index, guid in enumerate(self.shards):
            try:
                node = self.client.locate(guid).node
            except HermesError:
                node = ""
            rows.append(
                {"index": index, "name": shard_name(self.name, index), "guid": guid, "node": node}
            )
        return rows
