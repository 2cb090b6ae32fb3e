"""Membership: the cluster's live nodes and storesites, and their incarnations.

See docs/DESIGN.md §5, §7.

A node registers as the ephemeral ``nodes/<name>``, a storesite as
``storesites/<id>``, each with JSON ``{"address", "tags", ...extra}``. A
member's *incarnation* is the ZooKeeper session that owns its entry (hex):
every registration by a new session is a new incarnation, also under the
same name and address, and an incarnation never comes back once its entry
is gone. :class:`Membership` registers, reads the members through the
watched cache and calls membership watchers, from the session's worker
thread, with the whole set after every change.
"""

from __future__ import annotations

import json
import logging
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from nameservice.cache import WatchedCache
from nameservice.errors import InvalidNameError, NameServiceError, NameTakenError
from nameservice.patterns import validate_name
from nameservice.session import Session

__all__ = ["NODES", "STORESITES", "Member", "Membership"]

log = logging.getLogger(__name__)

NODES, STORESITES = "nodes", "storesites"
_RESERVED_MEMBER_KEYS = frozenset({"address", "tags"})


@dataclass(frozen=True, slots=True)
class Member:
    """A live node or storesite, as registered in the name service."""

    name: str
    address: str  # "host:port"
    tags: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    # The session owning the registration, hex; "" when not known.
    incarnation: str = ""


def _incarnation(stat: Any) -> str:
    owner = getattr(stat, "ephemeralOwner", 0) if stat is not None else 0
    return f"{owner:016x}" if owner else ""


def _parse_member(name: str, raw: bytes, stat: Any = None) -> Member:
    try:
        fields = json.loads(raw.decode()) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        fields = {}
    if not isinstance(fields, dict):
        fields = {}
    extra = {k: v for k, v in fields.items() if k not in _RESERVED_MEMBER_KEYS}
    tags = fields.get("tags") or ()
    return Member(
        name=name,
        address=str(fields.get("address", "")),
        tags=tuple(str(t) for t in tags) if isinstance(tags, list | tuple) else (),
        data=types.MappingProxyType(extra),
        incarnation=_incarnation(stat),
    )


def _validate_address(address: Any, what: str) -> str:
    if not isinstance(address, str) or ":" not in address or address.startswith(":"):
        raise InvalidNameError(f"address {address!r} of {what} is not host:port")
    return address


class Membership:
    """Registrations and the live members of one cluster rooted at ``root``."""

    def __init__(self, session: Session, cache: WatchedCache, root: str) -> None:
        self._session = session
        self._cache = cache
        self._root = root
        self._watchers: dict[str, list[Callable[[dict[str, Member]], None]]] = {
            NODES: [],
            STORESITES: [],
        }
        self._delivered: dict[str, dict[str, Member] | None] = {NODES: None, STORESITES: None}
        self._refresh_queued: set[str] = set()
        self._deliver_lock = threading.RLock()

    def register_node(
        self, name: str, address: str, tags: Sequence[str], data: Mapping[str, Any] | None
    ) -> str:
        validate_name(name, "node name")
        _validate_address(address, f"node {name!r}")
        if isinstance(tags, str):
            raise InvalidNameError(f"tags of node {name!r} must be a sequence of strings")
        fields: dict[str, Any] = {"address": address, "tags": [str(t) for t in tags]}
        return self._register(NODES, "node", name, fields, data)

    def node_incarnation(self, name: str) -> str | None:
        validate_name(name, "node name")
        client = self._session.require_client()
        path = f"{self._root}/{NODES}/{name}"
        self._session.call(f"sync {path}", client.sync_async, path)
        try:
            _, stat = self._session.call(f"read {path}", client.get_async, path)
        except NoNodeError:
            return None
        return _incarnation(stat) or None

    def register_storesite(
        self, sid: str, address: str, data: Mapping[str, Any] | None = None
    ) -> str:
        validate_name(sid, "storesite id")
        _validate_address(address, f"storesite {sid!r}")
        return self._register(STORESITES, "storesite", sid, {"address": address}, data)

    def members(self, kind: str) -> dict[str, Member]:
        """Live members of ``kind`` (NODES or STORESITES) by name, through the cache."""
        directory = f"{self._root}/{kind}"
        index = self._cache.read_children(directory)
        found = self._cache.read_data_many([f"{directory}/{n}" for n in index.names], _parse_member)
        return {member.name: member for member in found.values() if isinstance(member, Member)}

    def watch(self, kind: str, callback: Callable[[dict[str, Member]], None]) -> None:
        """Call ``callback`` with every live member of ``kind`` now and after every change."""
        with self._deliver_lock:
            members = self.members(kind)
            self._watchers[kind].append(callback)
            self._delivered[kind] = members
            callback(dict(members))

    def changed(self, path: str) -> None:
        """A cached entry at ``path`` was dropped: refresh the members it may list."""
        for kind in (NODES, STORESITES):
            if path.startswith(f"{self._root}/{kind}"):
                self._schedule_refresh(kind)

    def refresh_all(self) -> None:
        """Membership may have changed while the session was away."""
        self._schedule_refresh(NODES)
        self._schedule_refresh(STORESITES)

    def _register(
        self,
        kind: str,
        what: str,
        name: str,
        fields: dict[str, Any],
        data: Mapping[str, Any] | None,
    ) -> str:
        extra = dict(data or {})
        clash = _RESERVED_MEMBER_KEYS & extra.keys()
        if clash:
            raise InvalidNameError(f"data of {what} {name!r} may not set {sorted(clash)}")
        value = json.dumps({**fields, **extra}, sort_keys=True).encode()
        call = self._session.call
        client = self._session.require_client()
        path = f"{self._root}/{kind}/{name}"
        try:
            call(f"register {what} {name!r}", client.create_async, path, value, ephemeral=True)
            return self._own_incarnation(client, what, name, path)
        except NodeExistsError as exc:
            try:
                raw, stat = call(f"read {path}", client.get_async, path)
            except NoNodeError:
                raw, stat = b"", None
            session = client.client_id[0] if client.client_id else None
            if stat is not None and stat.ephemeralOwner == session:
                # Our own registration (a retry, or an update of its data).
                call(f"update {what} {name!r}", client.set_async, path, value)
                return _incarnation(stat)
            else:
                holder = _parse_member(name, raw).address or "?"
                raise NameTakenError(
                    f"{what} name {name!r} is taken by a live {what} at {holder}"
                ) from exc
        finally:
            self._cache.invalidate_written(path)

    def _own_incarnation(self, client: KazooClient, what: str, name: str, path: str) -> str:
        """The incarnation of the registration just made, read back from its owner.

        A create retried after a lost session belongs to the session that
        finally made it; one that is not ours (we lost it meanwhile) is refused.
        """
        try:
            _, stat = self._session.call(f"read {path}", client.get_async, path)
        except NoNodeError:
            stat = None
        session = client.client_id[0] if client.client_id else None
        if stat is None or stat.ephemeralOwner != session:
            raise NameTakenError(
                f"{what} name {name!r}: our registration ended as it was made (session lost)"
            )
        return _incarnation(stat)

    def _schedule_refresh(self, kind: str) -> None:
        with self._session.lock:
            if not self._watchers[kind] or kind in self._refresh_queued:
                return
            self._refresh_queued.add(kind)
            self._session.pending += 1
        self._session.submit(lambda: self._refresh(kind))

    def _refresh(self, kind: str) -> None:
        with self._session.lock:
            self._refresh_queued.discard(kind)
        try:
            with self._deliver_lock:
                try:
                    members = self.members(kind)
                except NameServiceError as exc:
                    log.warning(
                        "cannot refresh %s of cluster %s: %s", kind, self._session.cluster, exc
                    )
                    return
                if members == self._delivered[kind]:
                    return
                self._delivered[kind] = members
                for callback in list(self._watchers[kind]):
                    try:
                        callback(dict(members))
                    except Exception:
                        log.exception(
                            "%s watcher of cluster %s failed", kind, self._session.cluster
                        )
        finally:
            with self._session.lock:
                self._session.pending -= 1
                self._session.current.notify_all()
