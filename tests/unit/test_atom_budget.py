"""A node's budget of atoms (hermesx/node/budget.py): its defaults, its count and its refusals."""

from __future__ import annotations

import threading

import pytest

from hermesx.core.errors import CapacityError, ConfigurationError
from hermesx.node.budget import MEMORY_OVERCOMMIT, RAM_PER_ATOM_BYTES, AtomBudget, machine_memory
from hermesx.node.catalog import Catalog
from hermesx.node.config import NodeConfig
from hermesx.routing.stash import Stash

MIB = 2**20


def _budget(**limits: int) -> AtomBudget:
    return AtomBudget("n1", Catalog("n1", Stash(None)), atom_memory_bytes=64 * MIB, **limits)


def test_the_defaults_are_finite_and_follow_the_machines_memory() -> None:
    ram = machine_memory()
    assert 0 < ram < 2**50
    budget = _budget(runtime_atoms=10**9)
    assert budget.max_atoms == ram // RAM_PER_ATOM_BYTES
    assert budget.max_memory_bytes == ram * MEMORY_OVERCOMMIT
    # What the process can map bounds the default number, never a configured one.
    assert _budget(runtime_atoms=7).max_atoms == 7
    assert _budget(max_atoms=50, runtime_atoms=7).max_atoms == 50


def test_past_the_count_a_create_is_refused_with_the_numbers() -> None:
    budget = _budget(max_atoms=2, max_memory_bytes=2**40)
    with budget.taking("a"), budget.taking("b"):
        assert budget.room() == 0
        with pytest.raises(CapacityError) as caught, budget.taking("atom x was not created"):
            pass
    assert str(caught.value) == (
        "node n1 holds 2 atoms, its most (max_atoms 2); atom x was not created"
    )
    assert budget.held() == 0 and budget.room() == 2


def test_past_the_memory_a_create_is_refused_with_the_numbers() -> None:
    budget = _budget(max_atoms=100, max_memory_bytes=150 * MIB)
    assert budget.room() == 2
    with (
        budget.taking("a"),
        budget.taking("b"),
        pytest.raises(CapacityError) as caught,
        budget.taking("c"),
    ):
        pass
    assert "node n1 holds 2 atoms of 64 MiB each (128 MiB)" in str(caught.value)
    assert "its most of 150 MiB (max_atom_memory)" in str(caught.value)


def test_a_failed_creation_gives_its_place_back() -> None:
    budget = _budget(max_atoms=1, max_memory_bytes=2**40)
    with pytest.raises(RuntimeError), budget.taking("a"):
        raise RuntimeError("init trapped")
    with budget.taking("a"):
        assert budget.held() == 1


def test_creations_at_once_never_take_more_than_the_room() -> None:
    budget = _budget(max_atoms=5, max_memory_bytes=2**40)
    inside, refused = [], []
    entered = threading.Barrier(7)  # six creators and this test
    release = threading.Event()

    def create() -> None:
        try:
            with budget.taking("x"):
                inside.append(1)
                entered.wait(timeout=10)
                release.wait(timeout=10)
        except CapacityError:
            refused.append(1)
            entered.wait(timeout=10)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    entered.wait(timeout=10)
    release.set()
    for t in threads:
        t.join(timeout=10)
    assert (len(inside), len(refused)) == (5, 1)


def test_a_config_with_a_budget_below_one_atom_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="max_atoms must be 0"):
        NodeConfig("n1", max_atoms=-1).validate()
    with pytest.raises(ConfigurationError, match="could hold no atom"):
        NodeConfig("n1", max_atom_memory_bytes=MIB).validate()
