"""The name service client: membership, atom names, scoped aliases, homes (docs/DESIGN.md §7).

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
entry is gone (docs/DESIGN.md §5).

Kazoo's synchronous calls block forever without quorum, so every call here is
``*_async(...).get(timeout)`` and fails with :class:`NoQuorumError` after
``timeout`` seconds. Membership watchers and state listeners are called from
one worker thread of ours (never kazoo's), so they may call back into the
:class:`NameService`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kazoo.exceptions import NodeExistsError, NoNodeError

from nameservice.aliases import Aliases
from nameservice.cache import ABSENT, WatchedCache
from nameservice.errors import NameNotFoundError, NameTakenError, NoQuorumError
from nameservice.lookup import Lookups, parse_guid
from nameservice.membership import NODES, STORESITES, Member, Membership
from nameservice.patterns import validate_guid, validate_name
from nameservice.session import Session, ZooKeeperTLS
from nameservice.tree import ROOT, cluster_acl, make_tree, validate_auth

__all__ = ["Member", "NameService"]

log = logging.getLogger(__name__)


class NameService:
    """A client of the name service of one cluster (one ZooKeeper session).

    The parts: the session (:mod:`nameservice.session`), the cluster's tree
    (:mod:`nameservice.tree`), the watched cache (:mod:`nameservice.cache`),
    membership (:mod:`nameservice.membership`) and pattern lookups
    (:mod:`nameservice.lookup`) and scoped aliases (:mod:`nameservice.aliases`);
    names and homes are kept here.
    """

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
        tls: ZooKeeperTLS | None = None,
    ) -> None:
        checked_auth = validate_auth(auth, cluster)
        # The ACL of every znode this client creates under the cluster root.
        acl = cluster_acl(checked_auth, readers, cluster)
        self._cluster = validate_name(cluster, "cluster name")
        self._read_only = read_only
        self._root = f"{ROOT}/{cluster}"
        self._names_dir = names_dir = f"{self._root}/names"
        self._name_prefix = names_dir + "/"
        aliases_dir = f"{self._root}/aliases"
        self._session = Session(
            hosts,
            cluster,
            timeout=timeout,
            session_timeout=session_timeout,
            auth=checked_auth,
            acl=acl,
            on_state=self._on_state,
            on_connected=lambda: self._members.refresh_all(),
            tls=tls,
        )
        self._cache = WatchedCache(
            self._session, names_dir, aliases_dir, lambda path: self._members.changed(path)
        )
        # The cache's data dict itself: a cached name costs one dict get.
        self._data = self._cache.data
        self._members = Membership(self._session, self._cache, self._root)
        self._lookups = Lookups(self._cache, names_dir, aliases_dir)
        self._aliases = Aliases(self._session, self._cache, aliases_dir)

    # ------------------------------------------------------------------ session

    def start(self) -> None:
        """Connect and make sure the cluster's tree exists; NoQuorumError after ``timeout``."""
        if self._session.client is not None:
            return
        client = self._session.connect()
        try:
            make_tree(self._session, client, self._root, read_only=self._read_only)
        except NoNodeError:
            # Only a root given in the connect string can be missing under us.
            self.close()
            raise NameNotFoundError(
                f"name service at {self.hosts}: its root {client.chroot or '/'} does not "
                "exist; the ZooKeeper's operator creates it"
            ) from None
        except BaseException:
            self.close()
            raise
        log.info("name service connected to %s, cluster %s", self.hosts, self._cluster)

    @property
    def protected(self) -> bool:
        """True when this client creates and reads the cluster with the cluster's secret."""
        return self._session.acl is not None

    def close(self) -> None:
        """End the session: this client's registrations vanish at once."""
        self._session.close()
        with self._session.lock:
            self._session.state = "lost"
            self._cache.drop_all()

    def round_trip(self, timeout: float) -> str | None:
        """One request answered by the ZooKeeper server within ``timeout``; its session, or None.

        The session (hex, as an incarnation is written) is the one the request
        went out and came back on: a success proves the server heard that
        session after this call began, so it cannot expire before then plus
        the session timeout. None when there is no answer, or the session
        changed meanwhile (the old one was lost and kazoo made a new one).
        """
        return self._session.round_trip(timeout, self._root)

    def __enter__(self) -> NameService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def hosts(self) -> str:
        return self._session.hosts

    @property
    def cluster(self) -> str:
        return self._cluster

    @property
    def state(self) -> str:
        """``"connected"``, ``"suspended"`` (connection lost, session may live) or ``"lost"``."""
        return self._session.state

    def add_state_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(state)`` on every session state change, from a non-kazoo thread."""
        self._session.add_state_listener(callback)

    def cache_is_current(self) -> bool:
        """True when connected and no change notification is waiting to be applied."""
        with self._session.lock:
            return self._session.is_current()

    def wait_cache_current(self, timeout: float) -> bool:
        session = self._session
        deadline = time.monotonic() + timeout
        with session.current:
            while not session.is_current():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                session.current.wait(min(remaining, 0.1))
            return True

    def _on_state(self, state: str) -> None:
        # Under the session's lock, on kazoo's thread.
        if state != "suspended":
            # Watches did not survive the disconnection: refill from scratch.
            self._cache.drop_all()

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
        return self._members.register_node(name, address, tags, data)

    def node_incarnation(self, name: str) -> str | None:
        """The incarnation of live node ``name`` as ZooKeeper has it now, or None if none is live.

        Not cached: the server is synced first, so a registration or an
        expiry that happened before this call is seen.
        """
        return self._members.node_incarnation(name)

    def register_storesite(
        self, sid: str, address: str, data: Mapping[str, Any] | None = None
    ) -> str:
        """Register a live storesite (ephemeral); NameTakenError if another live one has the id.

        Returns the registration's incarnation.
        """
        return self._members.register_storesite(sid, address, data)

    def nodes(self) -> dict[str, Member]:
        """Live nodes by name (cached, kept fresh by watches)."""
        return self._members.members(NODES)

    def storesites(self) -> dict[str, Member]:
        """Live storesites by id (cached, kept fresh by watches)."""
        return self._members.members(STORESITES)

    def watch_nodes(self, callback: Callable[[dict[str, Member]], None]) -> None:
        """Call ``callback`` with all live nodes now and after every change."""
        self._members.watch(NODES, callback)

    def watch_storesites(self, callback: Callable[[dict[str, Member]], None]) -> None:
        """Call ``callback`` with all live storesites now and after every change."""
        self._members.watch(STORESITES, callback)

    # --------------------------------------------------------------- atom names

    def bind(self, name: str, guid: str) -> None:
        """Bind a unique atom name to ``guid``; NameTakenError if bound to another GUID."""
        validate_name(name)
        validate_guid(guid)
        client = self._session.require_client()
        path = self._name_prefix + name
        try:
            self._session.call(f"bind {name!r}", client.create_async, path, guid.encode())
        except NodeExistsError as exc:
            current = self._cache.fresh_data(path)
            # A retried create after a lost connection finds its own binding.
            if current != guid.encode():
                other = current.decode(errors="replace") if current is not None else "?"
                raise NameTakenError(f"name {name!r} is already bound to {other}") from exc
        finally:
            self._cache.invalidate_written(path)

    def unbind(self, name: str) -> None:
        """Remove a name; NameNotFoundError if it is not bound."""
        validate_name(name)
        client = self._session.require_client()
        path = self._name_prefix + name
        try:
            self._session.call(f"unbind {name!r}", client.delete_async, path)
        except NoNodeError as exc:
            raise NameNotFoundError(f"name {name!r} is not bound") from exc
        finally:
            self._cache.invalidate_written(path)

    def resolve(self, name: str) -> str:
        """GUID bound to ``name``; NameNotFoundError. Cached after first use."""
        # Hot path: a cached answer costs one dict get.
        value = self._data.get(self._name_prefix + name) if isinstance(name, str) else None
        if value.__class__ is str:
            return value
        if value is None:
            validate_name(name)
            value = self._cache.read_data(self._name_prefix + name, parse_guid)
        if value is ABSENT:
            raise NameNotFoundError(f"no atom is named {name!r}")
        return value  # type: ignore[no-any-return]

    def names(self) -> dict[str, str]:
        """Every bound name -> GUID."""
        index = self._cache.read_children(self._names_dir)
        return self._lookups.names_to_guids(index.names)

    # ---------------------------------------------------------- scoped aliases

    def alias_add(self, scope: str, alias: str, guid: str) -> None:
        """Give ``guid`` the alias ``alias`` in ``scope`` (idempotent)."""
        self._aliases.add(scope, alias, guid)

    def alias_remove(self, scope: str, alias: str, guid: str) -> None:
        """Take ``alias`` in ``scope`` away from ``guid``; NameNotFoundError if it has none."""
        self._aliases.remove(scope, alias, guid)

    def aliases(self, scope: str) -> dict[str, list[str]]:
        """Every alias in ``scope`` -> the GUIDs that carry it (sorted)."""
        return self._aliases.in_scope(scope)

    def scopes(self) -> list[str]:
        """Every alias scope in use."""
        return self._aliases.scopes()

    # ----------------------------------------------------------------- lookups

    def lookup(self, pattern: str, *, scope: str | None = None, all: bool = False) -> list[str]:
        """GUIDs whose name (scope None) or alias in ``scope`` fully matches ``pattern``.

        ``all=False``: at most one GUID; ``all=True``: every match, sorted, no
        duplicates. Patterns are RE2 regular expressions (linear time).
        """
        return self._lookups.lookup(pattern, scope=scope, all=all)

    def lookup_names(self, pattern: str, *, all: bool = False) -> list[tuple[str, str]]:
        """(name, GUID) pairs whose name fully matches ``pattern``, sorted by name."""
        return self._lookups.lookup_names(pattern, all=all)

    # ------------------------------------------------------------------- homes

    def set_home(self, guid: str, storesite: str) -> None:
        """Record that ``guid``'s location record now lives at ``storesite``."""
        validate_guid(guid)
        validate_name(storesite, "storesite id")
        client = self._session.require_client()
        path = f"{self._root}/homes/{guid}"
        value = storesite.encode()
        what = f"set home of {guid}"
        try:
            for _ in range(5):
                try:
                    self._session.call(what, client.set_async, path, value)
                    return
                except NoNodeError:
                    pass
                try:
                    self._session.call(what, client.create_async, path, value)
                    return
                except NodeExistsError:
                    continue
            raise NoQuorumError(f"name service at {self.hosts} kept racing on home of {guid}")
        finally:
            self._cache.invalidate_written(path)

    def home(self, guid: str) -> str | None:
        """Storesite holding ``guid``'s location record after a move, or None."""
        validate_guid(guid)
        value = self._cache.read_data(f"{self._root}/homes/{guid}", parse_guid)
        return None if value is ABSENT else value
