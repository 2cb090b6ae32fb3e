"""What the storesite needs of the cluster's membership, and that over the name service.

:class:`Directory` is the storesite's view of the name service (live nodes
and their incarnations, live storesites, atoms' homes);
:class:`NameServiceDirectory` provides it over :mod:`nameservice`, turning
name-service errors into the hermesx error of the same kind at this one
boundary (:func:`naming_error`). Tests give the storesite a directory of
their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from hermesx.core.errors import HermesError, NameNotFoundError, NamingError, error_from_wire
from hermesx.core.identity import GUID
from nameservice import NameService, NameServiceError
from storesite.placement import Member

__all__ = ["Directory", "NameServiceDirectory", "naming_error"]


class Directory(Protocol):
    """What the storesite needs from the name service."""

    def nodes(self) -> Mapping[str, Member]:
        """Live nodes by name (may lag a little behind ZooKeeper)."""
        ...

    def live_incarnation(self, node: str) -> str | None:
        """The incarnation of live node ``node`` read fresh (not cached); None if none is live."""
        ...

    def storesite_address(self, sid: str) -> str:
        """Address of a live storesite; NameNotFoundError if there is none."""
        ...

    def set_home(self, guid: str, sid: str) -> None: ...

    def home(self, guid: str) -> str:
        """The storesite the name service names as ``guid``'s home (by default its GUID's)."""
        ...


class NameServiceDirectory:
    """:class:`Directory` over the name service (package ``nameservice``).

    Name-service errors become the hermesx error of the same kind.
    """

    def __init__(self, names: NameService) -> None:
        self._names = names

    def nodes(self) -> Mapping[str, Member]:
        try:
            nodes = self._names.nodes()
        except NameServiceError as exc:
            raise naming_error(exc, "cannot list live nodes") from exc
        return nodes

    def live_incarnation(self, node: str) -> str | None:
        try:
            return self._names.node_incarnation(node)
        except NameServiceError as exc:
            raise naming_error(exc, f"cannot read node {node}'s registration") from exc

    def storesite_address(self, sid: str) -> str:
        try:
            members = self._names.storesites()
        except NameServiceError as exc:
            raise naming_error(exc, f"cannot find storesite {sid}") from exc
        member = members.get(sid)
        if member is None:
            raise NameNotFoundError(f"no live storesite {sid} in the name service")
        return member.address

    def set_home(self, guid: str, sid: str) -> None:
        try:
            self._names.set_home(guid, sid)
        except NameServiceError as exc:
            raise naming_error(exc, f"cannot record storesite {sid} as home of {guid}") from exc

    def home(self, guid: str) -> str:
        # The watched cache: this storesite's own set_home is read back at
        # once, another's within a watch notification (docs/DESIGN.md §6).
        try:
            moved = self._names.home(guid)
        except NameServiceError as exc:
            raise naming_error(exc, f"cannot read the home of {guid}") from exc
        return moved or GUID.parse(guid).home


def naming_error(exc: NameServiceError, what: str) -> HermesError:
    err = error_from_wire(exc.kind, f"{what}: {exc}")
    return err if type(err) is not HermesError else NamingError(f"{what}: {exc}")
