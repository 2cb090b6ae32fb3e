"""The name service's reads, cached and kept fresh by ZooKeeper watches (docs/DESIGN.md §7).

Every read sets a watch on what it read, and the watch's notification
drops that entry, so the next read fetches it again: a cached exact lookup
costs a dict get and nothing is polled. Each entry has a generation counter
so that a notification arriving while a read is in flight makes the read's
(possibly stale) answer be thrown away instead of cached; an epoch, bumped
when every entry is dropped (a new connection, a lost session), does the
same for reads whose watches went with the connection. Our own writes drop
the entries they touch, so a client always reads its own writes.

Lookup answers are cached too, valid while the version of their area (the
names directory or one alias scope) is unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import WatchedEvent

from nameservice.patterns import NameIndex
from nameservice.session import RETRYABLE, Session

__all__ = ["ABSENT", "WatchedCache"]


class _Absent:
    """Cached answer 'this znode does not exist' (watched by an exists watch)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Final = _Absent()

# A lookup: (area, pattern, all) -> ((epoch, area version), answer).
LookupKey = tuple[str, str, bool]


class WatchedCache:
    """Watched znode data and children of one cluster, and lookup answers over them.

    ``on_change(path)`` is called (outside the lock) for every path whose
    entry is dropped, so membership can be refreshed.
    """

    def __init__(
        self,
        session: Session,
        names_dir: str,
        aliases_dir: str,
        on_change: Callable[[str], None],
    ) -> None:
        self._session = session
        self._lock = session.lock
        self._names_dir = names_dir
        self._aliases_dir = aliases_dir
        self._on_change = on_change
        # znode path -> parsed data (or ABSENT), and znode path -> index of
        # its children. _generations guards fills.
        self.data: dict[str, Any] = {}
        self.children: dict[str, NameIndex] = {}
        self._generations: dict[str, int] = {}
        # Bumped whenever every cache is dropped (new connection, lost session).
        self._epoch = 0
        self._versions: dict[str, int] = {}
        self._lookups: dict[LookupKey, tuple[tuple[int, int], Any]] = {}

    # ---------------------------------------------------------- invalidation

    def on_watch(self, event: WatchedEvent) -> None:
        # Runs on kazoo's callback thread: drop entries, never block.
        if event.path is None:
            # Kazoo forgets every watch when the connection drops and fires
            # them with no path. The cached answers stay servable while
            # suspended (possibly stale); they are dropped on reconnection.
            return
        self.invalidate(event.path)

    def invalidate_written(self, path: str, parents: int = 1) -> None:
        """Drop what our own write on ``path`` changed: it and ``parents`` levels above."""
        for _ in range(parents + 1):
            self.invalidate(path)
            path = path.rsplit("/", 1)[0]

    def invalidate(self, path: str) -> None:
        with self._lock:
            self._generations[path] = self._generations.get(path, 0) + 1
            self.data.pop(path, None)
            self.children.pop(path, None)
            area = self._area_of(path)
            if area is not None:
                self._versions[area] = self._versions.get(area, 0) + 1
        self._on_change(path)

    def _area_of(self, path: str) -> str | None:
        """The lookup area a path belongs to: the names dir or one alias scope dir."""
        if path.startswith(self._names_dir):
            return self._names_dir
        if path.startswith(self._aliases_dir + "/"):
            scope = path[len(self._aliases_dir) + 1 :].split("/", 1)[0]
            return f"{self._aliases_dir}/{scope}"
        return None

    def drop_all(self) -> None:
        # Caller holds the lock. The epoch makes reads in flight discard
        # their answers: the watches they set may be gone with the connection.
        self._epoch += 1
        self.data.clear()
        self.children.clear()
        self._lookups.clear()

    def _snapshot(self, path: str) -> tuple[int, int]:
        return (self._epoch, self._generations.get(path, 0))

    def _store(
        self, cache: dict[str, Any], path: str, generation: tuple[int, int], value: Any
    ) -> None:
        with self._lock:
            # A notification since the read started means the value may be
            # stale: leave the entry empty so the next read fetches again.
            if self._snapshot(path) == generation:
                cache[path] = value

    # ----------------------------------------------------------------- reads

    def read_data(self, path: str, parse: Callable[[str, bytes, Any], Any]) -> Any:
        value = self.data.get(path)
        if value is not None:
            return value
        return self.read_data_many([path], parse)[path]

    def read_data_many(
        self, paths: Iterable[str], parse: Callable[[str, bytes, Any], Any]
    ) -> dict[str, Any]:
        """Data of every path (parsed, or ABSENT), fetching the uncached ones in one batch."""

        def fetch(client: KazooClient, path: str, pending: Any, deadline: float) -> Any:
            return self._fetch_data(client, path, pending, deadline, parse)

        return self._read_many(self.data, paths, "get_async", fetch)

    def _read_many(
        self,
        cache: dict[str, Any],
        paths: Iterable[str],
        request: str,
        answer: Callable[[KazooClient, str, Any, float], Any],
    ) -> dict[str, Any]:
        """Entries of ``cache`` for ``paths``; the missing ones are asked for all at once.

        Every path missing is sent with ``client.<request>(path, watch)``
        before the first answer is awaited (``answer(client, path, pending,
        deadline)``), so a batch costs about one round trip.
        """
        client = self._session.require_client()
        result: dict[str, Any] = {}
        missing: list[tuple[str, tuple[int, int], Any]] = []
        for path in paths:
            value = cache.get(path)
            if value is not None:
                result[path] = value
                continue
            generation = self._snapshot(path)
            missing.append((path, generation, getattr(client, request)(path, watch=self.on_watch)))
        deadline = time.monotonic() + self._session.timeout
        for path, generation, pending in missing:
            value = answer(client, path, pending, deadline)
            self._store(cache, path, generation, value)
            result[path] = value
        return result

    def _fetch_data(
        self,
        client: KazooClient,
        path: str,
        pending: Any,
        deadline: float,
        parse: Callable[[str, bytes, Any], Any],
    ) -> Any:
        call = self._session.call
        what = f"read {path}"
        leaf = path.rsplit("/", 1)[1]
        try:
            try:
                raw, stat = self._session.wait(what, pending, deadline)
            except RETRYABLE:
                raw, stat = call(what, client.get_async, path, watch=self.on_watch)
            return parse(leaf, raw, stat)
        except NoNodeError:
            pass
        # An exists watch fires when the znode is created.
        if call(what, client.exists_async, path, watch=self.on_watch) is None:
            return ABSENT
        try:
            raw, stat = call(what, client.get_async, path, watch=self.on_watch)
        except NoNodeError:
            return ABSENT
        return parse(leaf, raw, stat)

    def fresh_data(self, path: str) -> bytes | None:
        """The data of ``path`` read from the server, not cached; None when it is missing."""
        client = self._session.require_client()
        try:
            raw, _ = self._session.call(f"read {path}", client.get_async, path)
        except NoNodeError:
            return None
        return raw  # type: ignore[no-any-return]

    def read_children(self, path: str) -> NameIndex:
        index = self.children.get(path)
        if index is not None:
            return index
        return self.read_children_many([path])[path]

    def read_children_many(self, paths: Iterable[str]) -> dict[str, NameIndex]:
        return self._read_many(self.children, paths, "get_children_async", self._fetch_children)

    def _fetch_children(
        self, client: KazooClient, path: str, pending: Any, deadline: float
    ) -> NameIndex:
        call = self._session.call
        what = f"list {path}"
        try:
            try:
                return NameIndex(self._session.wait(what, pending, deadline))
            except RETRYABLE:
                return NameIndex(call(what, client.get_children_async, path, watch=self.on_watch))
        except NoNodeError:
            # An exists watch fires when the znode is created.
            call(what, client.exists_async, path, watch=self.on_watch)
            return NameIndex(())

    # --------------------------------------------------------------- lookups

    def lookup_version(self, area: str) -> tuple[int, int]:
        return (self._epoch, self._versions.get(area, 0))

    def remembered_lookup(self, key: LookupKey, version: tuple[int, int]) -> Any | None:
        """The answer kept for ``key`` if its area is still at ``version``, else None."""
        hit = self._lookups.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        return None

    def remember_lookup(self, key: LookupKey, version: tuple[int, int], result: Any) -> None:
        with self._lock:
            if self.lookup_version(key[0]) != version:
                return
            if len(self._lookups) >= 1024:
                self._lookups.clear()
            self._lookups[key] = (version, result)
