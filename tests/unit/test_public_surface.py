"""The public surface of hermesx: exactly the names of ``__all__``, each documented, none a
protobuf, and importing the package stays light."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing

import pytest
from google.protobuf.message import Message

import hermesx

PUBLIC = [
    "AtomError",
    "AtomProxy",
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
    "GUID",
    "HermesError",
    "HomeMovedError",
    "Hop",
    "InvalidNameError",
    "InvalidPatternError",
    "InvokeOutcome",
    "Location",
    "Member",
    "MemoryLimitError",
    "MethodError",
    "MigrationError",
    "MigrationResult",
    "NameNotFoundError",
    "NameTakenError",
    "NamingError",
    "NoQuorumError",
    "NodeStatus",
    "NotActiveHereError",
    "NotAuthorizedError",
    "OutcomeUnknownError",
    "PayloadTooLargeError",
    "RequestExpiredError",
    "StorageError",
    "TAD",
    "UnreachableError",
]

VALUES = ["Hop", "InvokeOutcome", "Location", "MigrationResult", "NodeStatus"]


def test_all_is_exactly_the_public_names_sorted() -> None:
    assert hermesx.__all__ == PUBLIC
    assert hermesx.__all__ == sorted(hermesx.__all__)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_imports_from_hermesx_and_has_its_own_docstring(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from hermesx import {name}", namespace)
    value = namespace[name]
    assert value is getattr(hermesx, name)
    assert (value.__doc__ or "").strip(), f"hermesx.{name} has no docstring"


@pytest.mark.parametrize("name", VALUES)
def test_returned_values_are_frozen_slotted_dataclasses(name: str) -> None:
    cls = getattr(hermesx, name)
    params = cls.__dataclass_params__
    assert params.frozen
    assert "__slots__" in vars(cls)


def _wire_types(annotation: object) -> list[str]:
    """Names of protobuf or gRPC types inside ``annotation`` (unions, generics and all)."""
    found = []
    for arg in (annotation, *typing.get_args(annotation)):
        if arg is annotation and typing.get_args(annotation):
            continue
        if typing.get_args(arg):
            found += _wire_types(arg)
        module = getattr(arg, "__module__", "") or ""
        if (isinstance(arg, type) and issubclass(arg, Message)) or module.startswith(
            ("hermesx.rpc.proto", "grpc")
        ):
            found.append(f"{module}.{getattr(arg, '__qualname__', arg)}")
    return found


@pytest.mark.parametrize("name", ["Client", "AtomProxy"])
def test_no_protobuf_in_a_public_signature(name: str) -> None:
    cls = getattr(hermesx, name)
    for attr, member in inspect.getmembers(cls, inspect.isfunction):
        if attr.startswith("_") and attr != "__init__":
            continue
        hints = typing.get_type_hints(member, vars(sys.modules[member.__module__]))
        for where, annotation in hints.items():
            assert not _wire_types(annotation), f"{name}.{attr} {where}: {annotation}"


def test_importing_hermesx_or_its_cli_does_not_load_grpc_or_kazoo() -> None:
    # `hermesx run` must stay light: the client's gRPC and kazoo load on first use.
    code = (
        "import sys, hermesx, hermesx.cli\n"
        "heavy = sorted(m for m in ('grpc', 'kazoo', 'google.protobuf') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
