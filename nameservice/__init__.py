"""hermesx's name service on ZooKeeper (docs/DESIGN.md §7) and a launcher for local ZooKeepers.

This package depends on nothing else of hermesx. :class:`NameService` keeps the
cluster's membership (nodes, storesites), unique atom names, scoped aliases and
storesite homes; :mod:`nameservice.zookeeper` starts real ZooKeeper servers for
local clusters and tests.
"""

from __future__ import annotations

from nameservice.client import Member, NameService
from nameservice.errors import (
    InvalidNameError,
    InvalidPatternError,
    NameNotFoundError,
    NameServiceError,
    NameTakenError,
    NoQuorumError,
    ZooKeeperError,
)
from nameservice.patterns import compile_pattern, validate_guid, validate_name
from nameservice.session import ZooKeeperTLS
from nameservice.zookeeper import ZooKeeperEnsemble, ZooKeeperServer, find_zookeeper

__all__ = [
    "InvalidNameError",
    "InvalidPatternError",
    "Member",
    "NameNotFoundError",
    "NameService",
    "NameServiceError",
    "NameTakenError",
    "NoQuorumError",
    "ZooKeeperEnsemble",
    "ZooKeeperError",
    "ZooKeeperServer",
    "ZooKeeperTLS",
    "compile_pattern",
    "find_zookeeper",
    "validate_guid",
    "validate_name",
]
