"""The stash keeps the newest TAD per GUID and survives a restart of the node."""

from __future__ import annotations

import pathlib

from hypothesis import given
from hypothesis import strategies as st

from hermesx.core.identity import TAD
from hermesx.routing.stash import Stash


def test_older_tads_never_replace_newer_ones(tmp_path: pathlib.Path) -> None:
    stash = Stash(tmp_path / "stash")
    assert stash.update("g", TAD("n2", 5))
    assert not stash.update("g", TAD("n1", 4))
    assert not stash.update("g", TAD("n3", 5))
    assert stash.get("g") == TAD("n2", 5)
    stash.close()


def test_forwarding_pointers_survive_a_restart(tmp_path: pathlib.Path) -> None:
    stash = Stash(tmp_path / "stash")
    stash.update("g1", TAD("n2", 7))
    stash.update("g2", TAD("n3", 2))
    stash.close()
    again = Stash(tmp_path / "stash")
    assert again.get("g1") == TAD("n2", 7)
    assert again.get("g2") == TAD("n3", 2)
    assert len(again) == 2
    again.close()


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 50)), max_size=40))
def test_stash_holds_the_maximum_age_seen_whatever_the_order(
    updates: list[tuple[str, int]],
) -> None:
    stash = Stash()
    for node, age in updates:
        stash.update("g", TAD(node, age))
    if updates:
        held = stash.get("g")
        assert held is not None and held.age == max(age for _, age in updates)
    else:
        assert stash.get("g") is None
