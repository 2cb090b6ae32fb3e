"""The name service client: membership, atom names, scoped aliases, homes (DESIGN.md §7).

Everything lives under ``/hermesx/<cluster>`` in ZooKeeper::

    nodes/<node>                      ephemeral, JSON {"address", "tags", ...extra}
    storesites/<id>                   ephemeral, JSON {"address", ...extra}
    names/<name>                      GUID (unique per cluster)
    aliases/<scope>/<alias>/<guid>    empty; an alias names any number of atoms
    homes/<guid>                      current storesite after a storesite move

Reads go through a cache kept fresh by ZooKeeper watches: every read sets a
watch on what it read, and the watch's notification drops that entry, so the
next read fetches it again. A cached exact lookup therefore costs a dict get;
nothing is polled. Each entry has a generation counter so that a notification
arriving while a read is in flight makes the read's (possibly stale) answer be
thrown away instead of cached. Our own writes drop the entries they touch, so a
client always reads its own writes.

With ``auth=(user, password)`` the cluster's tree is protected by ZooKeeper's
digest scheme: the cluster root and everything under it get an ACL giving all
permissions to that identity, read permission to each identity in
``readers`` (the cluster's clients: they only read, never write) and nothing
to anyone else, so only cluster members (who hold the secret) can write the
cluster and only they and its clients can read it. A client without a secret
gets :class:`NotAuthorizedError`. A reader (``read_only=True``, ``auth`` its
read-only identity) makes nothing and needs the cluster's tree to exist.

``/hermesx`` is shared by the clusters of one ZooKeeper. The first member
with a secret that finds it missing creates it readable by anyone but
writable only by its own secret, so no local user can squat a future
cluster's name under it (create ``/hermesx/<name>`` before the cluster
does, with content or an ACL of their choosing). A second cluster, with
another secret, cannot then make its root there: give it a root of its own
in the connect string (``HOST:PORT/ROOT``, a ZooKeeper *chroot*, which the
ZooKeeper's operator creates with an ACL of their choosing). A ``/hermesx``
made open (by a cluster without secrets, or before this rule) is left open.

A member's *incarnation* is the ZooKeeper session that owns its ephemeral
entry (hex): every registration by a new session is a new incarnation, also
under the same name and address, and an incarnation never comes back once its
entry is gone (DESIGN.md §5).

Kazoo's synchronous calls block forever without quorum, so every call here is
``*_async(...).get(timeout)`` and fails with :class:`NoQuorumError` after
``timeout`` seconds. Membership watchers and state listeners are called from
one worker thread of ours (never kazoo's), so they may call back into the
:class:`NameService`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import WatchedEvent
from kazoo.security import ACL, ANYONE_ID_UNSAFE, Permissions, make_digest_acl

from nameservice.errors import (
    InvalidNameError,
    NameNotFoundError,
    NameServiceError,
    NameTakenError,
    NoQuorumError,
    NotAuthorizedError,
)
from nameservice.patterns import NameIndex, compile_pattern, validate_guid, validate_name

__all__ = ["Member", "NameService"]

log = logging.getLogger(__name__)

ROOT: Final = "/hermesx"
_NODES, _STORESITES, _NAMES, _ALIASES, _HOMES = "nodes", "storesites", "names", "aliases", "homes"
_RETRYABLE = (ConnectionLoss, SessionExpiredError)
_RESERVED_MEMBER_KEYS = frozenset({"address", "tags"})


class _Absent:
    """Cached answer 'this znode does not exist' (watched by an exists watch)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Final = _Absent()


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


def _validate_auth(auth: Any, cluster: str) -> tuple[str, str] | None:
    if auth is None:
        return None
    if (
        not isinstance(auth, tuple)
        or len(auth) != 2
        or not all(isinstance(part, str) and part for part in auth)
        or ":" in auth[0]
    ):
        raise InvalidNameError(
            f"auth of cluster {cluster!r} must be (user, password), non-empty, no ':' in user"
        )
    return (auth[0], auth[1])


def _validate_address(address: Any, what: str) -> str:
    if not isinstance(address, str) or ":" not in address or address.startswith(":"):
        raise InvalidNameError(f"address {address!r} of {what} is not host:port")
    return address


class NameService:
    """A client of the name service of one cluster (one ZooKeeper session)."""

    def __init__(
        self,
        hosts: str,
        cluster: str,
        *,
        timeout: float = 5.0,
        session_timeout: float = 4.0,
        auth: tuple[str, str] | None = None,
        readers: Sequence[tuple[str, str]] = (),
        read_only: bool = False,
    ) -> None:
        self._hosts = hosts
        self._auth = _validate_auth(auth, cluster)
        self._read_only = read_only
        # The ACL of every znode this client creates under the cluster root.
        self._acl: list[ACL] | None = None
        if auth is not None:
            self._acl = [make_digest_acl(auth[0], auth[1], all=True)]
            for reader in readers:
                user, password = _validate_auth(reader, cluster) or ("", "")
                self._acl.append(make_digest_acl(user, password, read=True))
        self._cluster = validate_name(cluster, "cluster name")
        self._timeout = timeout
        self._session_timeout = session_timeout
        self._root = f"{ROOT}/{cluster}"
        self._names_dir = f"{self._root}/{_NAMES}"
        self._name_prefix = self._names_dir + "/"
        self._aliases_dir = f"{self._root}/{_ALIASES}"
        self._client: KazooClient | None = None
        self._lock = threading.Lock()
        self._state = "lost"
        # Watched caches: znode path -> parsed data (or _ABSENT), and
        # znode path -> index of its children. _generations guards fills.
        self._data: dict[str, Any] = {}
        self._children: dict[str, NameIndex] = {}
        self._generations: dict[str, int] = {}
        # Bumped whenever every cache is dropped (new connection, lost session).
        self._epoch = 0
        # Final lookup answers, valid while the version of their area (names
        # dir or one alias scope) is unchanged.
        self._versions: dict[str, int] = {}
        self._lookups: dict[tuple[str, str, bool], tuple[tuple[int, int], Any]] = {}
        # Membership watchers and state listeners, served by our worker thread.
        self._member_watchers: dict[str, list[Callable[[dict[str, Member]], None]]] = {
            _NODES: [],
            _STORESITES: [],
        }
        self._delivered: dict[str, dict[str, Member] | None] = {_NODES: None, _STORESITES: None}
        self._refresh_queued: set[str] = set()
        self._deliver_lock = threading.RLock()
        self._state_listeners: list[Callable[[str], None]] = []
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._pending = 0
        self._current = threading.Condition(self._lock)

    # ------------------------------------------------------------------ session

    def start(self) -> None:
        """Connect and make sure the cluster's tree exists; NoQuorumError after ``timeout``."""
        if self._client is not None:
            return
        client = KazooClient(
            hosts=self._hosts,
            timeout=self._session_timeout,
            # Reconnect quickly after an outage instead of backing off to 60 s.
            connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0},
            default_acl=self._acl,
            # Sent again by kazoo on every reconnection.
            auth_data=[("digest", f"{self._auth[0]}:{self._auth[1]}")] if self._auth else None,
        )
        client.add_listener(self._on_kazoo_state)
        self._worker = threading.Thread(
            target=self._run_worker, name=f"nameservice-{self._cluster}", daemon=True
        )
        self._worker.start()
        connected = client.start_async()
        connected.wait(self._timeout)
        if not client.connected:
            self._shutdown_client(client)
            self._stop_worker()
            raise NoQuorumError(
                f"name service at {self._hosts} did not answer within {self._timeout:g}s"
            )
        self._client = client
        self._state = "connected"
        try:
            self._make_tree(client)
        except NoNodeError:
            # Only a root given in the connect string can be missing under us.
            self.close()
            raise NameNotFoundError(
                f"name service at {self._hosts}: its root {client.chroot or '/'} does not "
                "exist; the ZooKeeper's operator creates it"
            ) from None
        except BaseException:
            self.close()
            raise
        log.info("name service connected to %s, cluster %s", self._hosts, self._cluster)

    def _make_tree(self, client: KazooClient) -> None:
        if self._read_only:
            # A reader makes nothing: the cluster's members made its tree.
            try:
                self._call(f"list {self._root}", client.get_children_async, self._root)
            except NoNodeError:
                raise NameNotFoundError(
                    f"no cluster {self._cluster} at name service {self._hosts} "
                    "(none of its nodes or storesites has started yet)"
                ) from None
            return
        if self._acl is not None:
            self._make_shared_root(client)
            try:
                self._call(f"create {self._root}", client.ensure_path_async, self._root)
            except NotAuthorizedError:
                raise NotAuthorizedError(
                    f"name service at {self._hosts} refused to create {self._root}: {ROOT} "
                    "there belongs to another cluster's secret; give this cluster a ZooKeeper "
                    "root of its own (HOST:PORT/ROOT, made by the ZooKeeper's operator)"
                ) from None
            self._protect(client)
        for area in (_NODES, _STORESITES, _NAMES, _ALIASES, _HOMES):
            self._call(
                f"create {self._root}/{area}", client.ensure_path_async, f"{self._root}/{area}"
            )
            if self._acl is not None:
                self._protect(client, f"{self._root}/{area}")
        if self._acl is None:
            # A protected cluster lets anyone see that its znodes exist, not
            # read them: fail here, with a clear error, not on first use.
            self._call(f"list {self._root}", client.get_children_async, self._root)

    def _make_shared_root(self, client: KazooClient) -> None:
        """Create /hermesx when missing: readable by all, writable by our secret alone."""
        assert self._acl is not None
        found = self._call(f"look for {ROOT}", client.exists_async, ROOT)
        if found is not None:
            return
        acl = [*self._acl, ACL(Permissions.READ, ANYONE_ID_UNSAFE)]
        try:
            self._call(f"create {ROOT}", client.create_async, ROOT, b"", acl=acl)
        except NodeExistsError:
            return  # another member (of this or another cluster) made it first
        log.info("name service: created %s, writable by cluster %s alone", ROOT, self._cluster)

    def _protect(self, client: KazooClient, path: str | None = None) -> None:
        """Give ``path`` (default: the cluster root) our ACL if it has another one.

        A cluster first run without a secret keeps open znodes; protecting the
        root and its area directories stops outsiders from creating or deleting
        entries in them (ZooKeeper checks those rights on the parent).
        """
        if self._acl is None:
            return
        path = path or self._root
        acls, _ = self._call(f"read the ACL of {path}", client.get_acls_async, path)
        if list(acls) == self._acl:
            return
        # Any version: two members protecting at once set the same ACL.
        self._call(f"protect {path}", client.set_acls_async, path, self._acl)
        log.info("name service: protected %s of cluster %s with its secret", path, self._cluster)

    @property
    def protected(self) -> bool:
        """True when this client creates and reads the cluster with the cluster's secret."""
        return self._acl is not None

    def close(self) -> None:
        """End the session: this client's registrations vanish at once."""
        client, self._client = self._client, None
        if client is not None:
            self._shutdown_client(client)
        self._stop_worker()
        with self._lock:
            self._state = "lost"
            self._drop_all()

    def round_trip(self, timeout: float) -> str | None:
        """One request answered by the ZooKeeper server within ``timeout``; its session, or None.

        The session (hex, as an incarnation is written) is the one the request
        went out and came back on: a success proves the server heard that
        session after this call began, so it cannot expire before then plus
        the session timeout. None when there is no answer, or the session
        changed meanwhile (the old one was lost and kazoo made a new one).
        """
        client = self._client
        if client is None:
            return None
        before = client.client_id
        if before is None:
            return None
        try:
            client.exists_async(self._root).get(timeout=timeout)
        except Exception:  # any failure: no proof of a live session
            return None
        after = client.client_id
        if after is None or after[0] != before[0]:
            return None
        return f"{before[0]:016x}"

    def __enter__(self) -> NameService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def hosts(self) -> str:
        return self._hosts

    @property
    def cluster(self) -> str:
        return self._cluster

    @property
    def state(self) -> str:
        """``"connected"``, ``"suspended"`` (connection lost, session may live) or ``"lost"``."""
        return self._state

    def add_state_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(state)`` on every session state change, from a non-kazoo thread."""
        self._state_listeners.append(callback)

    def cache_is_current(self) -> bool:
        """True when connected and no change notification is waiting to be applied."""
        with self._lock:
            return self._state == "connected" and self._pending == 0

    def wait_cache_current(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._current:
            while not (self._state == "connected" and self._pending == 0):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._current.wait(min(remaining, 0.1))
            return True

    # -------------------------------------------------------------- membership

    def register_node(
        self,
        name: str,
        address: str,
        tags: Sequence[str] = (),
        data: Mapping[str, Any] | None = None,
    ) -> str:
        """Register a live node (ephemeral); NameTakenError if another live one has the name.

        Returns the registration's incarnation (the session that owns it).
        """
        validate_name(name, "node name")
        _validate_address(address, f"node {name!r}")
        if isinstance(tags, str):
            raise InvalidNameError(f"tags of node {name!r} must be a sequence of strings")
        fields: dict[str, Any] = {"address": address, "tags": [str(t) for t in tags]}
        return self._register(_NODES, "node", name, fields, data)

    def node_incarnation(self, name: str) -> str | None:
        """The incarnation of live node ``name`` as ZooKeeper has it now, or None if none is live.

        Not cached: the server is synced first, so a registration or an
        expiry that happened before this call is seen.
        """
        validate_name(name, "node name")
        client = self._require_client()
        path = f"{self._root}/{_NODES}/{name}"
        self._call(f"sync {path}", client.sync_async, path)
        try:
            _, stat = self._call(f"read {path}", client.get_async, path)
        except NoNodeError:
            return None
        return _incarnation(stat) or None

    def register_storesite(
        self, sid: str, address: str, data: Mapping[str, Any] | None = None
    ) -> str:
        """Register a live storesite (ephemeral); NameTakenError if another live one has the id.

        Returns the registration's incarnation.
        """
        validate_name(sid, "storesite id")
        _validate_address(address, f"storesite {sid!r}")
        return self._register(_STORESITES, "storesite", sid, {"address": address}, data)

    def nodes(self) -> dict[str, Member]:
        """Live nodes by name (cached, kept fresh by watches)."""
        return self._members(_NODES)

    def storesites(self) -> dict[str, Member]:
        """Live storesites by id (cached, kept fresh by watches)."""
        return self._members(_STORESITES)

    def watch_nodes(self, callback: Callable[[dict[str, Member]], None]) -> None:
        """Call ``callback`` with all live nodes now and after every change."""
        self._watch_members(_NODES, callback)

    def watch_storesites(self, callback: Callable[[dict[str, Member]], None]) -> None:
        """Call ``callback`` with all live storesites now and after every change."""
        self._watch_members(_STORESITES, callback)

    # --------------------------------------------------------------- atom names

    def bind(self, name: str, guid: str) -> None:
        """Bind a unique atom name to ``guid``; NameTakenError if bound to another GUID."""
        validate_name(name)
        validate_guid(guid)
        client = self._require_client()
        path = self._name_prefix + name
        try:
            self._call(f"bind {name!r}", client.create_async, path, guid.encode())
        except NodeExistsError as exc:
            current = self._fresh_data(path)
            # A retried create after a lost connection finds its own binding.
            if current != guid.encode():
                other = current.decode(errors="replace") if current is not None else "?"
                raise NameTakenError(f"name {name!r} is already bound to {other}") from exc
        finally:
            self._invalidate_written(path)

    def unbind(self, name: str) -> None:
        """Remove a name; NameNotFoundError if it is not bound."""
        validate_name(name)
        client = self._require_client()
        path = self._name_prefix + name
        try:
            self._call(f"unbind {name!r}", client.delete_async, path)
        except NoNodeError as exc:
            raise NameNotFoundError(f"name {name!r} is not bound") from exc
        finally:
            self._invalidate_written(path)

    def resolve(self, name: str) -> str:
        """GUID bound to ``name``; NameNotFoundError. Cached after first use."""
        # Hot path: a cached answer costs one dict get.
        value = self._data.get(self._name_prefix + name) if isinstance(name, str) else None
        if value.__class__ is str:
            return value
        if value is None:
            validate_name(name)
            value = self._read_data(self._name_prefix + name, _parse_guid)
        if value is _ABSENT:
            raise NameNotFoundError(f"no atom is named {name!r}")
        return value  # type: ignore[no-any-return]

    def names(self) -> dict[str, str]:
        """Every bound name -> GUID."""
        index = self._read_children(self._names_dir)
        return self._names_to_guids(index.names)

    # ---------------------------------------------------------- scoped aliases

    def alias_add(self, scope: str, alias: str, guid: str) -> None:
        """Give ``guid`` the alias ``alias`` in ``scope`` (idempotent)."""
        validate_name(scope, "alias scope")
        validate_name(alias, "alias")
        validate_guid(guid)
        client = self._require_client()
        path = f"{self._aliases_dir}/{scope}/{alias}/{guid}"
        try:
            for _ in range(5):
                try:
                    self._call(
                        f"add alias {scope}={alias} to {guid}",
                        client.create_async,
                        path,
                        b"",
                        makepath=True,
                    )
                    return
                except NodeExistsError:
                    return
                except NoNodeError:
                    # A concurrent alias_remove dropped the emptied parent
                    # between makepath and create; create it again.
                    continue
            raise NoQuorumError(f"name service at {self._hosts} kept losing alias {scope}={alias}")
        finally:
            # makepath may have created the alias and scope directories too.
            self._invalidate_written(path, parents=3)

    def alias_remove(self, scope: str, alias: str, guid: str) -> None:
        """Take ``alias`` in ``scope`` away from ``guid``; NameNotFoundError if it has none."""
        validate_name(scope, "alias scope")
        validate_name(alias, "alias")
        validate_guid(guid)
        client = self._require_client()
        alias_dir = f"{self._aliases_dir}/{scope}/{alias}"
        path = f"{alias_dir}/{guid}"
        try:
            self._call(f"remove alias {scope}={alias} of {guid}", client.delete_async, path)
        except NoNodeError as exc:
            raise NameNotFoundError(
                f"atom {guid} has no alias {alias!r} in scope {scope!r}"
            ) from exc
        finally:
            self._invalidate_written(path)
        # Keep the scope's child list to live aliases: drop emptied parents.
        for parent in (alias_dir, f"{self._aliases_dir}/{scope}"):
            try:
                self._call(f"drop empty {parent}", client.delete_async, parent)
            except (NotEmptyError, NoNodeError):
                break
            finally:
                self._invalidate_written(parent)

    def aliases(self, scope: str) -> dict[str, list[str]]:
        """Every alias in ``scope`` -> the GUIDs that carry it (sorted)."""
        validate_name(scope, "alias scope")
        scope_dir = f"{self._aliases_dir}/{scope}"
        index = self._read_children(scope_dir)
        found = self._read_children_many([f"{scope_dir}/{alias}" for alias in index.names])
        return {
            alias: list(found[f"{scope_dir}/{alias}"].names)
            for alias in index.names
            if len(found[f"{scope_dir}/{alias}"])
        }

    # ----------------------------------------------------------------- lookups

    def lookup(self, pattern: str, *, scope: str | None = None, all: bool = False) -> list[str]:
        """GUIDs whose name (scope None) or alias in ``scope`` fully matches ``pattern``.

        ``all=False``: at most one GUID; ``all=True``: every match, sorted, no
        duplicates. Patterns are RE2 regular expressions (linear time).
        """
        compiled = compile_pattern(pattern)
        if scope is None:
            pairs = self._lookup_names(compiled.text, all=all)
            return sorted({guid for _, guid in pairs}) if all else [guid for _, guid in pairs[:1]]
        validate_name(scope, "alias scope")
        area = f"{self._aliases_dir}/{scope}"
        key = (area, compiled.text, all)
        version = self._lookup_version(area)
        hit = self._lookups.get(key)
        if hit is not None and hit[0] == version:
            return list(hit[1])
        index = self._read_children(area)
        matched = index.match(compiled, all=all)
        if not all and matched:
            # The first alias in order may have lost its last GUID a moment
            # ago; then look further.
            first = self._read_children(f"{area}/{matched[0]}")
            result = (
                [first.names[0]] if len(first) else self.lookup(pattern, scope=scope, all=True)[:1]
            )
        else:
            found = self._read_children_many([f"{area}/{alias}" for alias in matched])
            guids: set[str] = set()
            for children in found.values():
                guids.update(children.names)
            result = sorted(guids)
        self._remember_lookup(key, version, tuple(result))
        return result

    def lookup_names(self, pattern: str, *, all: bool = False) -> list[tuple[str, str]]:
        """(name, GUID) pairs whose name fully matches ``pattern``, sorted by name."""
        return self._lookup_names(compile_pattern(pattern).text, all=all)

    # ------------------------------------------------------------------- homes

    def set_home(self, guid: str, storesite: str) -> None:
        """Record that ``guid``'s location record now lives at ``storesite``."""
        validate_guid(guid)
        validate_name(storesite, "storesite id")
        client = self._require_client()
        path = f"{self._root}/{_HOMES}/{guid}"
        try:
            for _ in range(5):
                try:
                    self._call(f"set home of {guid}", client.set_async, path, storesite.encode())
                    return
                except NoNodeError:
                    pass
                try:
                    self._call(f"set home of {guid}", client.create_async, path, storesite.encode())
                    return
                except NodeExistsError:
                    continue
            raise NoQuorumError(f"name service at {self._hosts} kept racing on home of {guid}")
        finally:
            self._invalidate_written(path)

    def home(self, guid: str) -> str | None:
        """Storesite holding ``guid``'s location record after a move, or None."""
        validate_guid(guid)
        value = self._read_data(f"{self._root}/{_HOMES}/{guid}", _parse_guid)
        return None if value is _ABSENT else value

    # ================================================================ internals

    def _require_client(self) -> KazooClient:
        client = self._client
        if client is None:
            raise NoQuorumError(
                f"name service client for {self._hosts} (cluster {self._cluster}) is not started"
            )
        return client

    def _call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one kazoo ``*_async`` call, waiting at most ``timeout`` seconds in all.

        A lost connection is retried until the deadline: creates and deletes
        may then meet their own earlier effect, which callers accept.
        """
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return self._wait(what, method(*args, **kwargs), deadline)
            except _RETRYABLE as exc:
                if time.monotonic() >= deadline:
                    raise self._no_quorum(what) from exc
                time.sleep(0.05)

    def _wait(self, what: str, pending: Any, deadline: float) -> Any:
        """The answer of an async kazoo call, translated; ConnectionLoss passes for a retry."""
        try:
            return pending.get(timeout=max(0.0, deadline - time.monotonic()))
        except KazooTimeoutError as exc:
            raise self._no_quorum(what) from exc
        except ConnectionClosedError as exc:
            raise self._no_quorum(what) from exc
        except (NoNodeError, NodeExistsError, NotEmptyError, *_RETRYABLE):
            raise
        except NoAuthError as exc:
            raise NotAuthorizedError(
                f"name service at {self._hosts} refused to {what}: cluster {self._cluster} "
                "is protected and this client "
                + ("has another secret" if self._auth else "has no secret")
            ) from exc
        except KazooException as exc:
            raise NameServiceError(
                f"name service at {self._hosts} failed to {what}: {exc!r}"
            ) from exc

    def _no_quorum(self, what: str) -> NoQuorumError:
        return NoQuorumError(
            f"name service at {self._hosts} did not answer within {self._timeout:g}s ({what})"
        )

    # -- watched cache -----------------------------------------------------

    def _on_watch(self, event: WatchedEvent) -> None:
        # Runs on kazoo's callback thread: drop entries, never block.
        if event.path is None:
            # Kazoo forgets every watch when the connection drops and fires
            # them with no path. The cached answers stay servable while
            # suspended (possibly stale); they are dropped on reconnection.
            return
        self._invalidate(event.path)

    def _invalidate_written(self, path: str, parents: int = 1) -> None:
        """Drop what our own write on ``path`` changed: it and ``parents`` levels above."""
        for _ in range(parents + 1):
            self._invalidate(path)
            path = path.rsplit("/", 1)[0]

    def _invalidate(self, path: str) -> None:
        with self._lock:
            self._generations[path] = self._generations.get(path, 0) + 1
            self._data.pop(path, None)
            self._children.pop(path, None)
            area = self._area_of(path)
            if area is not None:
                self._versions[area] = self._versions.get(area, 0) + 1
        for kind in (_NODES, _STORESITES):
            if path.startswith(f"{self._root}/{kind}"):
                self._schedule_member_refresh(kind)

    def _area_of(self, path: str) -> str | None:
        """The lookup area a path belongs to: the names dir or one alias scope dir."""
        if path.startswith(self._names_dir):
            return self._names_dir
        if path.startswith(self._aliases_dir + "/"):
            scope = path[len(self._aliases_dir) + 1 :].split("/", 1)[0]
            return f"{self._aliases_dir}/{scope}"
        return None

    def _drop_all(self) -> None:
        # Caller holds the lock. The epoch makes reads in flight discard
        # their answers: the watches they set may be gone with the connection.
        self._epoch += 1
        self._data.clear()
        self._children.clear()
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

    def _read_data(self, path: str, parse: Callable[[str, bytes, Any], Any]) -> Any:
        value = self._data.get(path)
        if value is not None:
            return value
        return self._read_data_many([path], parse)[path]

    def _read_data_many(
        self, paths: Iterable[str], parse: Callable[[str, bytes, Any], Any]
    ) -> dict[str, Any]:
        """Data of every path (parsed, or _ABSENT), fetching the uncached ones in one batch."""
        client = self._require_client()
        result: dict[str, Any] = {}
        missing: list[tuple[str, tuple[int, int], Any]] = []
        for path in paths:
            value = self._data.get(path)
            if value is not None:
                result[path] = value
                continue
            generation = self._snapshot(path)
            missing.append((path, generation, client.get_async(path, watch=self._on_watch)))
        deadline = time.monotonic() + self._timeout
        for path, generation, pending in missing:
            value = self._fetch_data(client, path, pending, deadline, parse)
            self._store(self._data, path, generation, value)
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
        what = f"read {path}"
        leaf = path.rsplit("/", 1)[1]
        try:
            try:
                raw, stat = self._wait(what, pending, deadline)
            except _RETRYABLE:
                raw, stat = self._call(what, client.get_async, path, watch=self._on_watch)
            return parse(leaf, raw, stat)
        except NoNodeError:
            pass
        # An exists watch fires when the znode is created.
        if self._call(what, client.exists_async, path, watch=self._on_watch) is None:
            return _ABSENT
        try:
            raw, stat = self._call(what, client.get_async, path, watch=self._on_watch)
        except NoNodeError:
            return _ABSENT
        return parse(leaf, raw, stat)

    def _fresh_data(self, path: str) -> bytes | None:
        client = self._require_client()
        try:
            raw, _ = self._call(f"read {path}", client.get_async, path)
        except NoNodeError:
            return None
        return raw  # type: ignore[no-any-return]

    def _read_children(self, path: str) -> NameIndex:
        index = self._children.get(path)
        if index is not None:
            return index
        return self._read_children_many([path])[path]

    def _read_children_many(self, paths: Iterable[str]) -> dict[str, NameIndex]:
        client = self._require_client()
        result: dict[str, NameIndex] = {}
        missing: list[tuple[str, tuple[int, int], Any]] = []
        for path in paths:
            index = self._children.get(path)
            if index is not None:
                result[path] = index
                continue
            generation = self._snapshot(path)
            missing.append(
                (path, generation, client.get_children_async(path, watch=self._on_watch))
            )
        deadline = time.monotonic() + self._timeout
        for path, generation, pending in missing:
            what = f"list {path}"
            try:
                try:
                    index = NameIndex(self._wait(what, pending, deadline))
                except _RETRYABLE:
                    index = NameIndex(
                        self._call(what, client.get_children_async, path, watch=self._on_watch)
                    )
            except NoNodeError:
                self._call(what, client.exists_async, path, watch=self._on_watch)
                index = NameIndex(())
            self._store(self._children, path, generation, index)
            result[path] = index
        return result

    def _names_to_guids(self, names: Iterable[str]) -> dict[str, str]:
        paths = {name: self._name_prefix + name for name in names}
        found = self._read_data_many(paths.values(), _parse_guid)
        return {name: found[path] for name, path in paths.items() if found[path] is not _ABSENT}

    def _lookup_names(self, pattern: str, *, all: bool) -> list[tuple[str, str]]:
        compiled = compile_pattern(pattern)
        key = (self._names_dir, pattern, all)
        version = self._lookup_version(self._names_dir)
        hit = self._lookups.get(key)
        if hit is not None and hit[0] == version:
            return list(hit[1])
        index = self._read_children(self._names_dir)
        matched = index.match(compiled, all=all)
        guids = self._names_to_guids(matched)
        if not all and matched and not guids:
            # Unbound a moment ago: fall back to the full scan.
            return self._lookup_names(pattern, all=True)[:1]
        pairs = [(name, guids[name]) for name in matched if name in guids]
        self._remember_lookup(key, version, tuple(pairs))
        return pairs

    def _lookup_version(self, area: str) -> tuple[int, int]:
        return (self._epoch, self._versions.get(area, 0))

    def _remember_lookup(
        self, key: tuple[str, str, bool], version: tuple[int, int], result: Any
    ) -> None:
        with self._lock:
            if self._lookup_version(key[0]) != version:
                return
            if len(self._lookups) >= 1024:
                self._lookups.clear()
            self._lookups[key] = (version, result)

    # -- membership ----------------------------------------------------------

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
        client = self._require_client()
        path = f"{self._root}/{kind}/{name}"
        try:
            self._call(
                f"register {what} {name!r}", client.create_async, path, value, ephemeral=True
            )
            return self._own_incarnation(client, what, name, path)
        except NodeExistsError as exc:
            try:
                raw, stat = self._call(f"read {path}", client.get_async, path)
            except NoNodeError:
                raw, stat = b"", None
            session = client.client_id[0] if client.client_id else None
            if stat is not None and stat.ephemeralOwner == session:
                # Our own registration (a retry, or an update of its data).
                self._call(f"update {what} {name!r}", client.set_async, path, value)
                return _incarnation(stat)
            else:
                holder = _parse_member(name, raw).address or "?"
                raise NameTakenError(
                    f"{what} name {name!r} is taken by a live {what} at {holder}"
                ) from exc
        finally:
            self._invalidate_written(path)

    def _own_incarnation(self, client: KazooClient, what: str, name: str, path: str) -> str:
        """The incarnation of the registration just made, read back from its owner.

        A create retried after a lost session belongs to the session that
        finally made it; one that is not ours (we lost it meanwhile) is refused.
        """
        try:
            _, stat = self._call(f"read {path}", client.get_async, path)
        except NoNodeError:
            stat = None
        session = client.client_id[0] if client.client_id else None
        if stat is None or stat.ephemeralOwner != session:
            raise NameTakenError(
                f"{what} name {name!r}: our registration ended as it was made (session lost)"
            )
        return _incarnation(stat)

    def _members(self, kind: str) -> dict[str, Member]:
        directory = f"{self._root}/{kind}"
        index = self._read_children(directory)
        found = self._read_data_many([f"{directory}/{n}" for n in index.names], _parse_member)
        return {member.name: member for member in found.values() if isinstance(member, Member)}

    def _watch_members(self, kind: str, callback: Callable[[dict[str, Member]], None]) -> None:
        with self._deliver_lock:
            members = self._members(kind)
            self._member_watchers[kind].append(callback)
            self._delivered[kind] = members
            callback(dict(members))

    def _schedule_member_refresh(self, kind: str) -> None:
        with self._lock:
            if not self._member_watchers[kind] or kind in self._refresh_queued:
                return
            self._refresh_queued.add(kind)
            self._pending += 1
        self._work.put(lambda: self._refresh_members(kind))

    def _refresh_members(self, kind: str) -> None:
        with self._lock:
            self._refresh_queued.discard(kind)
        try:
            with self._deliver_lock:
                try:
                    members = self._members(kind)
                except NameServiceError as exc:
                    log.warning("cannot refresh %s of cluster %s: %s", kind, self._cluster, exc)
                    return
                if members == self._delivered[kind]:
                    return
                self._delivered[kind] = members
                for callback in list(self._member_watchers[kind]):
                    try:
                        callback(dict(members))
                    except Exception:
                        log.exception("%s watcher of cluster %s failed", kind, self._cluster)
        finally:
            with self._lock:
                self._pending -= 1
                self._current.notify_all()

    # -- session state and worker ---------------------------------------------

    def _on_kazoo_state(self, state: str) -> None:
        # Runs on kazoo's connection thread: record and hand over, never block.
        name = {
            KazooState.CONNECTED: "connected",
            KazooState.SUSPENDED: "suspended",
            KazooState.LOST: "lost",
        }.get(state, "lost")
        with self._lock:
            self._state = name
            if name != "suspended":
                # Watches did not survive the disconnection: refill from scratch.
                self._drop_all()
            self._current.notify_all()
        log.info("name service session for cluster %s is %s", self._cluster, name)
        self._work.put(lambda: self._announce_state(name))

    def _announce_state(self, state: str) -> None:
        if state == "connected":
            # Membership may have changed while we were away.
            self._schedule_member_refresh(_NODES)
            self._schedule_member_refresh(_STORESITES)
        for callback in list(self._state_listeners):
            try:
                callback(state)
            except Exception:
                log.exception("state listener of cluster %s failed", self._cluster)

    def _run_worker(self) -> None:
        while True:
            task = self._work.get()
            if task is None:
                return
            try:
                task()
            except Exception:
                log.exception("name service worker of cluster %s failed", self._cluster)

    def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        self._work.put(None)
        if worker is not threading.current_thread():
            worker.join(timeout=self._timeout)

    def _shutdown_client(self, client: KazooClient) -> None:
        try:
            client.stop()
            client.close()
        except KazooException as exc:
            log.debug("closing name service client for %s: %s", self._hosts, exc)


def _parse_guid(_name: str, raw: bytes, _stat: Any = None) -> str:
    return raw.decode(errors="replace")
