"""hermesx: mobile WebAssembly atoms with location-independent invocation.

The public surface is what ``__all__`` names: :class:`Client` and
:class:`AtomProxy` to reach a cluster, the values they return
(:mod:`hermesx.core.types`, and :class:`Member` for a live node), the
identities :class:`GUID` and :class:`TAD`, and the exception tree of
:mod:`hermesx.core.errors`, every class of it. Everything else is internal.
"""

from __future__ import annotations

import typing

from hermesx.core import errors as _errors
from hermesx.core.errors import AtomError as AtomError
from hermesx.core.errors import AtomTrapError as AtomTrapError
from hermesx.core.errors import BadModuleError as BadModuleError
from hermesx.core.errors import CallCycleError as CallCycleError
from hermesx.core.errors import CallTimeoutError as CallTimeoutError
from hermesx.core.errors import CapacityError as CapacityError
from hermesx.core.errors import CheckpointDamagedError as CheckpointDamagedError
from hermesx.core.errors import CommunicationError as CommunicationError
from hermesx.core.errors import ConfigurationError as ConfigurationError
from hermesx.core.errors import DeadlineExceededError as DeadlineExceededError
from hermesx.core.errors import HermesError as HermesError
from hermesx.core.errors import HomeMovedError as HomeMovedError
from hermesx.core.errors import InvalidNameError as InvalidNameError
from hermesx.core.errors import InvalidPatternError as InvalidPatternError
from hermesx.core.errors import MemoryLimitError as MemoryLimitError
from hermesx.core.errors import MethodError as MethodError
from hermesx.core.errors import MigrationError as MigrationError
from hermesx.core.errors import NameNotFoundError as NameNotFoundError
from hermesx.core.errors import NameTakenError as NameTakenError
from hermesx.core.errors import NamingError as NamingError
from hermesx.core.errors import NoQuorumError as NoQuorumError
from hermesx.core.errors import NotActiveHereError as NotActiveHereError
from hermesx.core.errors import NotAuthorizedError as NotAuthorizedError
from hermesx.core.errors import OutcomeUnknownError as OutcomeUnknownError
from hermesx.core.errors import PayloadTooLargeError as PayloadTooLargeError
from hermesx.core.errors import RequestExpiredError as RequestExpiredError
from hermesx.core.errors import StorageError as StorageError
from hermesx.core.errors import UnreachableError as UnreachableError
from hermesx.core.identity import GUID as GUID
from hermesx.core.identity import TAD as TAD
from hermesx.core.types import Hop as Hop
from hermesx.core.types import InvokeOutcome as InvokeOutcome
from hermesx.core.types import Location as Location
from hermesx.core.types import MigrationResult as MigrationResult
from hermesx.core.types import NodeStatus as NodeStatus

if typing.TYPE_CHECKING:
    from hermesx.client import AtomProxy as AtomProxy
    from hermesx.client import Client as Client
    from nameservice import Member as Member

# The client pulls in gRPC and kazoo: these load when first asked for, so that
# `hermesx run` and the runtime stay light.
_LAZY = {"AtomProxy": "hermesx.client", "Client": "hermesx.client", "Member": "nameservice"}

__all__ = sorted(
    [
        *(name for name in _errors.__all__ if isinstance(getattr(_errors, name), type)),
        *_LAZY,
        "GUID",
        "Hop",
        "InvokeOutcome",
        "Location",
        "MigrationResult",
        "NodeStatus",
        "TAD",
    ]
)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hermesx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
