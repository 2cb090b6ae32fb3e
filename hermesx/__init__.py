"""hermesx: mobile WebAssembly atoms with location-independent invocation."""

from __future__ import annotations

from hermesx.errors import (
    AtomError,
    AtomTrapError,
    BadModuleError,
    CallCycleError,
    CallTimeoutError,
    CommunicationError,
    ConfigurationError,
    DeadlineExceededError,
    HermesError,
    InvalidNameError,
    InvalidPatternError,
    MemoryLimitError,
    MethodError,
    MigrationError,
    NameNotFoundError,
    NameTakenError,
    NamingError,
    NoQuorumError,
    PayloadTooLargeError,
    StorageError,
    UnreachableError,
)
from hermesx.identity import GUID, TAD

__all__ = [
    "GUID",
    "TAD",
    "AtomError",
    "AtomTrapError",
    "BadModuleError",
    "CallCycleError",
    "CallTimeoutError",
    "CommunicationError",
    "ConfigurationError",
    "DeadlineExceededError",
    "HermesError",
    "InvalidNameError",
    "InvalidPatternError",
    "MemoryLimitError",
    "MethodError",
    "MigrationError",
    "NameNotFoundError",
    "NameTakenError",
    "NamingError",
    "NoQuorumError",
    "PayloadTooLargeError",
    "StorageError",
    "UnreachableError",
]
