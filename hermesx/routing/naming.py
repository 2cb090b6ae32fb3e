"""hermesx's boundary to the name service (docs/DESIGN.md §7).

``nameservice`` depends on nothing of ours and raises its own errors; this
wrapper is the one place where they become :class:`HermesError`s, keeping
their kind (not found, name taken, invalid pattern, no quorum, ...).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import nameservice
from hermesx.core.errors import NamingError, error_from_wire
from hermesx.core.identity import GUID
from hermesx.rpc import roles

__all__ = ["Member", "Naming"]

Member = nameservice.Member


# GUID texts parsed by Naming.guid_of, kept up to this many (a call by GUID parses once).
MAX_PARSED_GUIDS = 4096


def _hermes_error(exc: nameservice.NameServiceError) -> Exception:
    err = error_from_wire(exc.kind, str(exc))
    if type(err).__name__ == "HermesError":
        err = NamingError(str(exc))
    return err


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except nameservice.NameServiceError as exc:
        raise _hermes_error(exc) from exc


class Naming:
    """The name service as hermesx uses it."""

    def __init__(
        self,
        hosts: str,
        cluster: str,
        *,
        tls: pathlib.Path | None = None,
        role: str = roles.NODE,
        timeout: float = 5.0,
        session_timeout: float = 4.0,
        cert: str = "",
    ) -> None:
        """``role``: members (node, storesite) read and write; every other role only reads."""
        self.hosts = hosts
        self.cluster = cluster
        auth = None
        readers: list[tuple[str, str]] = []
        read_only = False
        zk_tls = None
        if tls is not None:
            from hermesx.rpc import security

            # ``cert``: the process's certificate, shown to a ZooKeeper that speaks TLS.
            files = security.zk_tls(tls, cert or roles.CLIENT_CERT_NAME)
            zk_tls = nameservice.ZooKeeperTLS(*files) if files is not None else None

            # Only holders of the cluster's secret may write its root; its
            # clients, with a read-only secret of their own, may read it.
            auth = security.zk_auth(tls, role)
            if role in roles.MEMBER_ROLES:
                readers = security.zk_readers(tls)
            else:
                read_only = True
        self._parsed: dict[str, str] = {}  # GUID text -> its canonical form
        self._names: set[str] = set()  # texts seen lately that are names, not GUIDs
        self._ns = nameservice.NameService(
            hosts,
            cluster,
            timeout=timeout,
            session_timeout=session_timeout,
            auth=auth,
            readers=readers,
            read_only=read_only,
            tls=zk_tls,
        )

    def start(self) -> None:
        with _translated():
            self._ns.start()

    def close(self) -> None:
        self._ns.close()

    # ---------------------------------------------------------------- members

    def register_node(
        self,
        name: str,
        address: str,
        tags: Sequence[str] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """Register this node (``extra``: more facts to publish, such as its pid); returns its
        incarnation (the session owning the registration)."""
        with _translated():
            return self._ns.register_node(name, address, tags, extra)

    def node_incarnation(self, name: str) -> str | None:
        """Node ``name``'s live incarnation read fresh from ZooKeeper; None if it is not live."""
        with _translated():
            return self._ns.node_incarnation(name)

    def nodes(self) -> dict[str, Member]:
        with _translated():
            return self._ns.nodes()

    def storesites(self) -> dict[str, Member]:
        with _translated():
            return self._ns.storesites()

    def watch_nodes(self, callback: Callable[[dict[str, Member]], None]) -> None:
        with _translated():
            self._ns.watch_nodes(callback)

    def add_state_listener(self, callback: Callable[[str], None]) -> None:
        self._ns.add_state_listener(callback)

    def round_trip(self, timeout: float) -> str | None:
        """See :meth:`nameservice.NameService.round_trip`."""
        return self._ns.round_trip(timeout)

    @property
    def state(self) -> str:
        return self._ns.state

    # ---------------------------------------------------------------- names

    def bind(self, name: str, guid: str) -> None:
        with _translated():
            self._ns.bind(name, guid)

    def unbind(self, name: str) -> None:
        with _translated():
            self._ns.unbind(name)

    def resolve(self, name: str) -> str:
        with _translated():
            return self._ns.resolve(name)

    def guid_of(self, name_or_guid: str) -> str:
        """The GUID of an atom given by name or GUID text (the hot path of every call)."""
        parsed = self._parsed.get(name_or_guid)
        if parsed is not None:
            return parsed
        if name_or_guid not in self._names:
            if GUID.looks_like(name_or_guid):
                parsed = str(GUID.parse(name_or_guid))
                if len(self._parsed) >= MAX_PARSED_GUIDS:
                    self._parsed.clear()
                self._parsed[name_or_guid] = parsed
                return parsed
            if len(self._names) >= MAX_PARSED_GUIDS:
                self._names.clear()
            self._names.add(name_or_guid)
        try:
            return self._ns.resolve(name_or_guid)  # a dict read while the name is cached
        except nameservice.NameServiceError as exc:
            raise _hermes_error(exc) from exc

    def names(self) -> dict[str, str]:
        with _translated():
            return self._ns.names()

    def alias_add(self, scope: str, alias: str, guid: str) -> None:
        with _translated():
            self._ns.alias_add(scope, alias, guid)

    def alias_remove(self, scope: str, alias: str, guid: str) -> None:
        with _translated():
            self._ns.alias_remove(scope, alias, guid)

    def aliases(self, scope: str) -> dict[str, list[str]]:
        with _translated():
            return self._ns.aliases(scope)

    def scopes(self) -> list[str]:
        with _translated():
            return self._ns.scopes()

    def lookup(self, pattern: str, *, scope: str | None = None, all: bool = False) -> list[str]:
        with _translated():
            return self._ns.lookup(pattern, scope=scope, all=all)

    def lookup_names(self, pattern: str, *, all: bool = False) -> list[tuple[str, str]]:
        with _translated():
            return self._ns.lookup_names(pattern, all=all)

    def home(self, guid: str) -> str | None:
        with _translated():
            return self._ns.home(guid)
