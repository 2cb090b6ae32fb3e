"""``Idempotency-Key``: an HTTP retry never runs a method twice (docs/DESIGN.md §13).

A call sent with ``Idempotency-Key: K`` gets a request id *derived* from K
and from a digest of what is asked (the method and the arguments)::

    hk1.<sha256(K), 32 hex>.<sha256(method, canonical JSON arguments), 16 hex>

so the same request retried — through this gateway or any other, after a
gateway restart, a migration or the kill -9 of the atom's node — carries the
same request id, and the atom's reply table (docs/DESIGN.md §4, "Exactly
once") answers the first outcome instead of running it again, for as long as
the reply is in the atom's window (1,024 replies by default).

The same key with other arguments must not be answered with the first call's
reply: :class:`KeyStore` remembers each key's digest per atom (in SQLite in
the gateway's data directory, 24 hours, at most 1,000,000 keys) and refuses a
mismatch with 422 (``idempotency_key_reused``). A gateway that does not
remember the key (another gateway, or after the key's 24 hours) derives
another request id from the other digest, so the call runs as a new one: it
is never answered with another call's reply.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import sqlite3
import threading
import time
from typing import Any, Final

from hermesx.gateway.problems import Problem

__all__ = ["KeyStore", "arguments_digest", "check_key", "request_id_for"]

# Printable ASCII without spaces, as the IETF draft's examples and most clients use.
_KEY: Final = re.compile(r"[\x21-\x7e]{1,255}")
KEEP_SECONDS: Final = 24 * 3600.0
MAX_KEYS: Final = 1_000_000
# Without a data directory the keys live in memory (~810 bytes each at most): ~81 MiB.
MAX_KEYS_IN_MEMORY: Final = 100_000
# Keys written between two prunes: a store holds at most its most plus these.
PRUNE_EVERY: Final = 1000


def check_key(key: str) -> str:
    """``key`` if it is a usable Idempotency-Key, else a 400 problem."""
    if not _KEY.fullmatch(key):
        shown = key if len(key) <= 40 else key[:37] + "..."
        raise Problem(
            "bad_idempotency_key",
            f"Idempotency-Key {shown!r} must be 1 to 255 printable ASCII characters without spaces",
        )
    return key


def arguments_digest(method: str, value: Any) -> str:
    """Digest of a call's method and arguments; map keys' order does not count."""
    try:
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (RecursionError, ValueError) as exc:
        raise Problem("bad_json", f"the arguments cannot be read as one value: {exc}") from None
    return hashlib.sha256(f"{method}\0{canonical}".encode()).hexdigest()


def request_id_for(key: str, digest: str) -> str:
    """The request id of the call sent with ``key`` whose arguments have ``digest``."""
    return f"hk1.{hashlib.sha256(key.encode()).hexdigest()[:32]}.{digest[:16]}"


class KeyStore:
    """Each key's digest, per atom: a key reused with other arguments is refused.

    ``path`` None keeps them in memory (they then last as long as the process), at most
    MAX_KEYS_IN_MEMORY of them; in a file, at most MAX_KEYS (``most`` overrides either).
    """

    def __init__(
        self,
        path: pathlib.Path | None,
        *,
        keep_seconds: float = KEEP_SECONDS,
        most: int | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._keep = keep_seconds
        self._most = most if most is not None else (MAX_KEYS if path else MAX_KEYS_IN_MEMORY)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        # WAL with NORMAL sync: a key written survives the gateway's kill -9.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS keys (guid TEXT, key TEXT, digest TEXT, at REAL, "
            "PRIMARY KEY (guid, key))"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS keys_at ON keys (at)")
        self._db.commit()
        self._writes = 0

    def claim(self, guid: str, key: str, digest: str) -> None:
        """Bind ``key`` to ``digest`` for atom ``guid``; 422 when it is bound to another."""
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "SELECT digest, at FROM keys WHERE guid = ? AND key = ?", (guid, key)
            ).fetchone()
            if row is not None and row[1] >= now - self._keep:
                if row[0] != digest:
                    raise Problem(
                        "idempotency_key_reused",
                        f"Idempotency-Key {key!r} was used for atom {guid} with other "
                        "arguments (or another method); refused, not run. Use a new key "
                        "for a new call",
                    )
                return
            self._db.execute(
                "INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?)", (guid, key, digest, now)
            )
            self._writes += 1
            if self._writes % PRUNE_EVERY == 0:
                self._prune(now)
            self._db.commit()

    def _prune(self, now: float) -> None:
        self._db.execute("DELETE FROM keys WHERE at < ?", (now - self._keep,))
        (count,) = self._db.execute("SELECT COUNT(*) FROM keys").fetchone()
        if count > self._most:
            self._db.execute(
                "DELETE FROM keys WHERE rowid IN (SELECT rowid FROM keys ORDER BY at LIMIT ?)",
                (count - self._most,),
            )

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM keys").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()
