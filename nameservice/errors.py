"""Errors of the name service (docs/DESIGN.md §7, §9).

``nameservice`` depends on nothing else of ours, so it has its own small tree.
hermesx translates these into its own ``NamingError`` branch by ``kind``, so
the kinds below are a contract::

    NameServiceError            kind "nameservice"
    ├── NameNotFoundError       "not_found"        no such name / alias / member
    ├── NameTakenError          "name_taken"       a unique name is already bound or registered
    ├── InvalidNameError        "invalid_name"     empty, too long, or forbidden characters
    ├── InvalidPatternError     "invalid_pattern"  a pattern that is invalid or over the limits
    ├── NoQuorumError           "no_quorum"        ZooKeeper did not answer in time
    ├── NotAuthorizedError      "not_authorized"   the cluster ACL refuses this client (no secret)
    └── ZooKeeperError          "zookeeper"        a local ZooKeeper could not be found or started

Messages are one line and name what was wrong.
"""

from __future__ import annotations

__all__ = [
    "InvalidNameError",
    "InvalidPatternError",
    "NameNotFoundError",
    "NameServiceError",
    "NameTakenError",
    "NoQuorumError",
    "NotAuthorizedError",
    "ZooKeeperError",
]


class NameServiceError(Exception):
    """Root of the name service's errors. ``kind`` names the class on the wire."""

    kind = "nameservice"


class NameNotFoundError(NameServiceError):
    kind = "not_found"


class NameTakenError(NameServiceError):
    kind = "name_taken"


class InvalidNameError(NameServiceError):
    kind = "invalid_name"


class InvalidPatternError(NameServiceError):
    kind = "invalid_pattern"


class NoQuorumError(NameServiceError):
    kind = "no_quorum"


class NotAuthorizedError(NameServiceError):
    """The cluster root is protected by an ACL and this client lacks its secret."""

    kind = "not_authorized"


class ZooKeeperError(NameServiceError):
    """The local ZooKeeper launcher failed (not installed, did not start)."""

    kind = "zookeeper"
