"""hermesx: mobile WebAssembly atoms with location-independent invocation."""

from __future__ import annotations

from hermesx.core.errors import (
    AtomError,
    AtomTrapError,
    BadModuleError,
    CallCycleError,
    CallTimeoutError,
    CapacityError,
    CheckpointDamagedError,
    CommunicationError,
    ConfigurationError,
    DeadlineExceededError,
    HermesError,
    HomeMovedError,
    InvalidNameError,
    InvalidPatternError,
    MemoryLimitError,
    MethodError,
    MigrationError,
    NameNotFoundError,
    NameTakenError,
    NamingError,
    NoQuorumError,
    NotAuthorizedError,
    OutcomeUnknownError,
    PayloadTooLargeError,
    RequestExpiredError,
    StorageError,
    UnreachableError,
)
from hermesx.core.identity import GUID, TAD

__all__ = [
    "GUID",
    "TAD",
    "AtomError",
    "AtomTrapError",
    "BadModuleError",
    "CallCycleError",
    "CallTimeoutError",
    "CapacityError",
    "CheckpointDamagedError",
    "Client",
    "CommunicationError",
    "ConfigurationError",
    "DeadlineExceededError",
    "HermesError",
    "HomeMovedError",
    "InvalidNameError",
    "InvalidPatternError",
    "MemoryLimitError",
    "MethodError",
    "MigrationError",
    "NameNotFoundError",
    "NameTakenError",
    "NamingError",
    "NoQuorumError",
    "NotAuthorizedError",
    "OutcomeUnknownError",
    "PayloadTooLargeError",
    "RequestExpiredError",
    "StorageError",
    "UnreachableError",
]


def __getattr__(name: str) -> object:
    # The client pulls in gRPC and kazoo; load it only when asked for, so
    # that `hermesx run` and the runtime stay light.
    if name == "Client":
        from hermesx.client import Client

        return Client
    raise AttributeError(f"module 'hermesx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"Client"})
