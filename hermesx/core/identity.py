"""Atom identity: GUIDs and temporal address descriptors (docs/DESIGN.md §1).

A GUID names an atom for its whole life and encodes its *home* storesite, so
that any node can find the place that knows where the atom is. A TAD says
where the atom was at a given age; a higher age is newer.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from hermesx.core.errors import InvalidNameError

__all__ = ["GUID", "TAD", "validate_name"]

_HEX32 = re.compile(r"[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_LEN = 128


def validate_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid node / storesite / atom name, else raise.

    Names become ZooKeeper path segments, so they cannot hold ``/`` and must
    be short; we also keep them to characters a shell user can type.
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"{what} is empty")
    if len(name) > MAX_NAME_LEN:
        raise InvalidNameError(f"{what} {name[:20]!r}… is longer than {MAX_NAME_LEN} characters")
    if not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"{what} {name!r} may hold only letters, digits, '.', '_' and '-' "
            "and must start with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True, order=True)
class GUID:
    """``<home-storesite-id>:<32 lowercase hex>`` (contract)."""

    home: str
    uid: str

    def __post_init__(self) -> None:
        validate_name(self.home, "storesite id in GUID")
        if not _HEX32.fullmatch(self.uid):
            raise InvalidNameError(f"GUID part {self.uid!r} is not 32 lowercase hex digits")

    @classmethod
    def new(cls, home: str) -> GUID:
        return cls(home, secrets.token_hex(16))

    @classmethod
    def parse(cls, text: str) -> GUID:
        home, sep, uid = text.rpartition(":")
        if not sep:
            raise InvalidNameError(f"{text!r} is not a GUID (expected '<storesite>:<32 hex>')")
        return cls(home, uid)

    @staticmethod
    def looks_like(text: str) -> bool:
        """True when ``text`` has the GUID shape (so it is not an atom name)."""
        home, sep, uid = text.rpartition(":")
        return bool(sep and home and _HEX32.fullmatch(uid))

    def __str__(self) -> str:
        return f"{self.home}:{self.uid}"


@dataclass(frozen=True, slots=True)
class TAD:
    """Temporal address descriptor: the atom was on ``node`` at ``age``."""

    node: str
    age: int

    def newer_than(self, other: TAD | None) -> bool:
        return other is None or self.age > other.age

    def __str__(self) -> str:
        return f"{self.node}@{self.age}"
