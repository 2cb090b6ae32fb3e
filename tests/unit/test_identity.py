"""GUIDs and TADs: the text form is a contract; ages order TADs."""

from __future__ import annotations

import pytest

from hermesx import GUID, TAD, InvalidNameError
from hermesx.core.identity import validate_name


def test_guid_text_form_round_trips_and_names_its_home() -> None:
    guid = GUID.new("s1")
    text = str(guid)
    home, _, uid = text.partition(":")
    assert home == "s1"
    assert len(uid) == 32 and uid == uid.lower()
    assert GUID.parse(text) == guid
    assert GUID.looks_like(text)


@pytest.mark.parametrize(
    "text", ["", "s1", "s1:xyz", "s1:" + "A" * 32, ":" + "a" * 32, "s/1:" + "a" * 32]
)
def test_malformed_guid_is_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidNameError):
        GUID.parse(text)


def test_names_are_not_mistaken_for_guids() -> None:
    assert not GUID.looks_like("counter")
    assert not GUID.looks_like("c1:5")


def test_newer_tad_wins_by_age() -> None:
    old, new = TAD("n1", 3), TAD("n2", 4)
    assert new.newer_than(old)
    assert not old.newer_than(new)
    assert new.newer_than(None)


@pytest.mark.parametrize("name", ["", "a/b", "x" * 129, "-lead", "sp ace"])
def test_invalid_names_are_refused_with_the_name_in_the_message(name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        validate_name(name, "atom name")
    assert "atom name" in str(info.value)
