"""The hermesx exception tree (docs/DESIGN.md §9).

Every error a user of hermesx can see is a ``HermesError``. Errors of the
libraries underneath (grpc, kazoo, lmdb, wasmtime) are translated where they
are caught, with ``raise ... from exc``, into the most specific branch::

    HermesError
    ├── CommunicationError          a peer did not answer or the wire failed
    │   ├── UnreachableError        no path to the atom (chain broken, no fallback)
    │   ├── CallTimeoutError        the call's overall deadline passed
    │   ├── OutcomeUnknownError     the call may or may not have run: retry with its request id
    │   └── NotAuthorizedError      refused: no certificate or secret of this cluster
    ├── NamingError
    │   ├── NameNotFoundError       no atom / node / storesite by that name
    │   ├── NameTakenError          a unique name is already registered
    │   ├── InvalidNameError        empty, too long, or with forbidden characters
    │   ├── InvalidPatternError     a lookup pattern that is invalid or too costly
    │   └── NoQuorumError           the name service cannot be reached in time
    ├── AtomError
    │   ├── BadModuleError          module rejected at load (missing export, bad ABI)
    │   ├── AtomTrapError           the atom trapped
    │   ├── DeadlineExceededError   the call ran past its CPU deadline, or waited past its deadline
    │   ├── MemoryLimitError        the atom hit its memory cap
    │   ├── MethodError             the atom returned an error status (unknown method, bad args)
    │   ├── CallCycleError          a call cycle came back into a non-reentrant atom
    │   └── PayloadTooLargeError    arguments or result over the size limit
    ├── MigrationError              a move was refused or aborted
    │   └── NotActiveHereError      the atom is not active on the node asked to move it
    ├── RequestExpiredError         a retry older than the atom's reply window: refused, not run
    ├── StorageError                storesite / LMDB failure, unknown checkpoint or module
    │   ├── CheckpointDamagedError  a stored or sent snapshot fails its checksum: not restored
    │   └── HomeMovedError          the atom's records moved to another storesite
    ├── CapacityError               a node or atom limit reached (atoms per node, address space)
    └── ConfigurationError          bad configuration or command-line input

Errors that cross the wire keep their kind (``error.kind``) and message:
:func:`error_from_wire` rebuilds the same class on the other side.
"""

from __future__ import annotations

__all__ = [
    "AtomError",
    "AtomTrapError",
    "BadModuleError",
    "CallCycleError",
    "CallTimeoutError",
    "CapacityError",
    "CheckpointDamagedError",
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
    "NotActiveHereError",
    "NotAuthorizedError",
    "OutcomeUnknownError",
    "PayloadTooLargeError",
    "RequestExpiredError",
    "StorageError",
    "UnreachableError",
    "error_from_wire",
]


class HermesError(Exception):
    """Root of every hermesx error. ``kind`` names the class on the wire."""

    kind = "hermes"


class CommunicationError(HermesError):
    """A peer did not answer or the wire failed."""

    kind = "communication"


class UnreachableError(CommunicationError):
    """No path to the atom or the peer: the chain is broken and no fallback answered."""

    kind = "unreachable"


class CallTimeoutError(CommunicationError):
    """The call's overall deadline passed before a reply came."""

    kind = "timeout"


class NotAuthorizedError(CommunicationError):
    """Refused: no certificate or secret of this cluster, or not of a role allowed to ask."""

    kind = "not_authorized"


# The message ends with this phrase and the id, so the id survives the wire.
_RETRY_WITH = "retry with request id "


class OutcomeUnknownError(CommunicationError):
    """The call may have run or not; sending its request id again tells which.

    ``request_id`` is the id to retry with (``client.invoke(..., request_id=...)``
    or ``client.atom(name, request_id=...)``): the atom answers the first run's
    reply if it ran, runs it now if it did not, and never runs it twice.
    """

    kind = "outcome_unknown"

    def __init__(self, message: str, request_id: str = "") -> None:
        if not request_id and _RETRY_WITH in message:
            request_id = message.rpartition(_RETRY_WITH)[2].strip()
        elif request_id and _RETRY_WITH not in message:
            message = f"{message}; {_RETRY_WITH}{request_id}"
        super().__init__(message)
        self.request_id = request_id


class NamingError(HermesError):
    """The name service refused or could not answer."""

    kind = "naming"


class NameNotFoundError(NamingError):
    """No atom, node or storesite by that name."""

    kind = "not_found"


class NameTakenError(NamingError):
    """A unique name is already registered."""

    kind = "name_taken"


class InvalidNameError(NamingError):
    """A name that is empty, too long, or holds forbidden characters."""

    kind = "invalid_name"


class InvalidPatternError(NamingError):
    """A lookup pattern that is invalid or too costly."""

    kind = "invalid_pattern"


class NoQuorumError(NamingError):
    """The name service cannot be reached in time."""

    kind = "no_quorum"


class AtomError(HermesError):
    """The atom could not run the call, or ended it with an error."""

    kind = "atom"


class BadModuleError(AtomError):
    """A module rejected at load: not WebAssembly, a missing export, a bad ABI."""

    kind = "bad_module"


class AtomTrapError(AtomError):
    """The atom trapped."""

    kind = "trap"


class DeadlineExceededError(AtomError):
    """The call ran past its CPU deadline, or waited past its deadline."""

    kind = "deadline"


class MemoryLimitError(AtomError):
    """The atom hit its memory cap."""

    kind = "memory"


class MethodError(AtomError):
    """The atom returned an error status (an unknown method, bad arguments)."""

    kind = "method"


class CallCycleError(AtomError):
    """A call cycle came back into a non-reentrant atom."""

    kind = "call_cycle"


class PayloadTooLargeError(AtomError):
    """Arguments or a result over the size limit."""

    kind = "payload_too_large"


class MigrationError(HermesError):
    """A move was refused or aborted."""

    kind = "migration"


class NotActiveHereError(MigrationError):
    """The node asked to move an atom does not run it (it may have moved since it was located)."""

    kind = "not_active_here"


class RequestExpiredError(HermesError):
    """A request id older than the atom's reply window: refused, and not run again."""

    kind = "request_expired"


class StorageError(HermesError):
    """A storesite or LMDB failure, or an unknown checkpoint or module."""

    kind = "storage"


class CheckpointDamagedError(StorageError):
    """Damage no retry mends: the atom is not restored from it (docs/DESIGN.md §6)."""

    kind = "checkpoint_damaged"


class HomeMovedError(StorageError):
    """A storesite asked about an atom whose records it handed to another storesite."""

    kind = "home_moved"


class CapacityError(HermesError):
    """A node or atom limit reached (atoms per node, address space)."""

    kind = "capacity"


class ConfigurationError(HermesError):
    """Bad configuration or command-line input."""

    kind = "configuration"


def _all_subclasses(cls: type[HermesError]) -> list[type[HermesError]]:
    found: list[type[HermesError]] = [cls]
    for sub in cls.__subclasses__():
        found.extend(_all_subclasses(sub))
    return found


_BY_KIND: dict[str, type[HermesError]] = {c.kind: c for c in _all_subclasses(HermesError)}


def error_from_wire(kind: str, message: str) -> HermesError:
    """Rebuild the error a peer sent, keeping its class when we know the kind."""
    return _BY_KIND.get(kind, HermesError)(message)
