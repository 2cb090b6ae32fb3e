"""Errors keep their class across the wire, and the public surface is what __all__ says."""

from __future__ import annotations

import hermesx
from hermesx.core import errors


def test_every_error_class_round_trips_by_kind() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.HermesError):
            rebuilt = errors.error_from_wire(cls.kind, "boom")
            assert type(rebuilt) is cls
            assert str(rebuilt) == "boom"


def test_kinds_are_unique() -> None:
    classes = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    kinds = [c.kind for c in classes]
    assert len(kinds) == len(set(kinds))


def test_unknown_kind_becomes_the_root_error() -> None:
    err = errors.error_from_wire("no-such-kind", "x")
    assert type(err) is errors.HermesError


def test_public_surface_is_exactly_all() -> None:
    import types

    public = {
        n
        for n in dir(hermesx)
        if not n.startswith("_")
        and n != "annotations"
        and not isinstance(getattr(hermesx, n), types.ModuleType)
    }
    assert public == set(hermesx.__all__)
