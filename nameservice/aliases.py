"""Scoped aliases: names any number of atoms may share within a scope (docs/DESIGN.md §7).

An alias lives at ``aliases/<scope>/<alias>/<guid>`` (an empty znode per
atom that carries it). Adding is idempotent; removing the last atom of an
alias drops the emptied alias and scope directories, so a scope's children
are its live aliases. Reads go through the watched cache.
"""

from __future__ import annotations

from kazoo.exceptions import NodeExistsError, NoNodeError, NotEmptyError

from nameservice.cache import WatchedCache
from nameservice.errors import NameNotFoundError, NoQuorumError
from nameservice.patterns import validate_guid, validate_name
from nameservice.session import Session

__all__ = ["Aliases"]


class Aliases:
    """The scoped aliases of one cluster, under ``aliases_dir``."""

    def __init__(self, session: Session, cache: WatchedCache, aliases_dir: str) -> None:
        self._session = session
        self._cache = cache
        self._aliases_dir = aliases_dir

    def add(self, scope: str, alias: str, guid: str) -> None:
        """Give ``guid`` the alias ``alias`` in ``scope`` (idempotent)."""
        path = self._alias_path(scope, alias, guid)
        client = self._session.require_client()
        try:
            for _ in range(5):
                try:
                    self._session.call(
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
            raise NoQuorumError(
                f"name service at {self._session.hosts} kept losing alias {scope}={alias}"
            )
        finally:
            # makepath may have created the alias and scope directories too.
            self._cache.invalidate_written(path, parents=3)

    def remove(self, scope: str, alias: str, guid: str) -> None:
        """Take ``alias`` in ``scope`` away from ``guid``; NameNotFoundError if it has none."""
        path = self._alias_path(scope, alias, guid)
        client = self._session.require_client()
        alias_dir = path.rsplit("/", 1)[0]
        try:
            self._session.call(f"remove alias {scope}={alias} of {guid}", client.delete_async, path)
        except NoNodeError as exc:
            raise NameNotFoundError(
                f"atom {guid} has no alias {alias!r} in scope {scope!r}"
            ) from exc
        finally:
            self._cache.invalidate_written(path)
        # Keep the scope's child list to live aliases: drop emptied parents.
        for parent in (alias_dir, f"{self._aliases_dir}/{scope}"):
            try:
                self._session.call(f"drop empty {parent}", client.delete_async, parent)
            except (NotEmptyError, NoNodeError):
                break
            finally:
                self._cache.invalidate_written(parent)

    def _alias_path(self, scope: str, alias: str, guid: str) -> str:
        """The znode of ``guid``'s alias ``alias`` in ``scope``, each part checked."""
        validate_name(scope, "alias scope")
        validate_name(alias, "alias")
        validate_guid(guid)
        return f"{self._aliases_dir}/{scope}/{alias}/{guid}"

    def scopes(self) -> list[str]:
        """Every scope that holds an alias now."""
        return sorted(self._cache.read_children(self._aliases_dir).names)

    def in_scope(self, scope: str) -> dict[str, list[str]]:
        """Every alias in ``scope`` -> the GUIDs that carry it (sorted)."""
        validate_name(scope, "alias scope")
        scope_dir = f"{self._aliases_dir}/{scope}"
        index = self._cache.read_children(scope_dir)
        found = self._cache.read_children_many([f"{scope_dir}/{alias}" for alias in index.names])
        return {
            alias: list(found[f"{scope_dir}/{alias}"].names)
            for alias in index.names
            if len(found[f"{scope_dir}/{alias}"])
        }
