"""Name validation and RE2 pattern lookups (nameservice.patterns), no servers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nameservice.errors import InvalidNameError, InvalidPatternError
from nameservice.patterns import (
    MAX_NAME_LEN,
    MAX_PATTERN_LEN,
    NameIndex,
    compile_pattern,
    validate_guid,
    validate_name,
)

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True)


@pytest.mark.parametrize("name", ["a", "printer-1", "A.b_c-9", "x" * MAX_NAME_LEN])
def test_valid_names_pass(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "is empty"),
        ("x" * (MAX_NAME_LEN + 1), "longer than 128"),
        ("a/b", "'a/b'"),
        ("-lead", "'-lead'"),
        (".hidden", "'.hidden'"),
        ("sp ace", "'sp ace'"),
        ("naïve", "'naïve'"),
        ("line\nbreak", "'line\\nbreak'"),
    ],
)
def test_invalid_names_are_refused_with_the_name(name: str, message: str) -> None:
    with pytest.raises(InvalidNameError, match=re.escape(message)):
        validate_name(name, "alias")


def test_invalid_name_error_has_wire_kind() -> None:
    with pytest.raises(InvalidNameError) as info:
        validate_name("")
    assert info.value.kind == "invalid_name"


@pytest.mark.parametrize("guid", ["", "a/b", "a b", "..", "x" * 300])
def test_invalid_guids_are_refused(guid: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_guid(guid)


def test_guid_text_form_is_accepted() -> None:
    guid = "s1:" + "0123456789abcdef" * 2
    assert validate_guid(guid) == guid


@pytest.mark.parametrize("pattern", ["(", "a)", "[z-a]", "a{2,1}", "*a"])
def test_invalid_regex_is_refused_naming_the_pattern(pattern: str) -> None:
    with pytest.raises(InvalidPatternError, match=re.escape(repr(pattern))) as info:
        compile_pattern(pattern)
    assert info.value.kind == "invalid_pattern"


def test_empty_and_overlong_patterns_are_refused() -> None:
    with pytest.raises(InvalidPatternError, match="empty"):
        compile_pattern("")
    with pytest.raises(InvalidPatternError, match=f"longer than {MAX_PATTERN_LEN}"):
        compile_pattern("a" * (MAX_PATTERN_LEN + 1))


def test_pattern_compiling_to_a_huge_program_is_refused() -> None:
    # 50 chars of pattern, but RE2 expands the counted repeats to ~10^6 states.
    with pytest.raises(InvalidPatternError, match=r"too costly|not a valid"):
        compile_pattern("((((a{100}){100}){100}){100})")


def test_backreferences_are_refused_as_not_linear() -> None:
    with pytest.raises(InvalidPatternError):
        compile_pattern(r"(a)\1")


def test_lookup_is_a_full_match() -> None:
    index = NameIndex(["printer", "printer-1", "laser-printer"])
    assert index.match(compile_pattern("printer"), all=True) == ("printer",)
    assert index.match(compile_pattern("printer.*"), all=True) == ("printer", "printer-1")
    assert index.match(compile_pattern(".*printer"), all=True) == ("laser-printer", "printer")


def test_any_returns_the_first_match_in_order_and_all_every_match() -> None:
    index = NameIndex(["c-1", "a-1", "b-1", "a-2"])
    assert index.match(compile_pattern("[ab]-.*"), all=False) == ("a-1",)
    assert index.match(compile_pattern("[ab]-.*"), all=True) == ("a-1", "a-2", "b-1")
    assert index.match(compile_pattern("zzz"), all=False) == ()
    assert NameIndex([]).match(compile_pattern(".*"), all=True) == ()


def test_patterns_that_could_span_names_match_one_name_at_a_time() -> None:
    index = NameIndex(["ab", "cd", "xa", "qq"])
    # [^x] would match the newline between joined names in a plain scan.
    assert index.match(compile_pattern("[^x]*"), all=True) == ("ab", "cd", "qq")
    assert index.match(compile_pattern(r"(?s).*d"), all=True) == ("cd",)
    assert index.match(compile_pattern(r"\s*ab"), all=True) == ("ab",)


def test_text_anchors_behave_as_for_one_name() -> None:
    index = NameIndex(["ab", "ac", "bc"])
    assert index.match(compile_pattern(r"\Aa."), all=True) == ("ab", "ac")
    assert index.match(compile_pattern(r".c\z"), all=True) == ("ac", "bc")
    assert index.match(compile_pattern(r"^b.$"), all=True) == ("bc",)


def test_pathological_pattern_answers_over_a_long_name_list() -> None:
    # Exponential for a backtracking engine; RE2 answers in one linear pass.
    index = NameIndex(["a" * 100 + f"-{i}" for i in range(20_000)] + ["a" * 40 + "b"])
    assert index.match(compile_pattern("(a*)*b"), all=True) == ("a" * 40 + "b",)
    assert index.match(compile_pattern("(a|aa)*c"), all=False) == ()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(names, max_size=30),
    st.sampled_from(["a.*", ".*1", "[a-f]+", ".*[._-].*", "[^a]*", r"\w+", "(x|y)?z*", ".{3}"]),
    st.booleans(),
)
def test_index_agrees_with_matching_each_name(
    entries: list[str], pattern: str, all_matches: bool
) -> None:
    expected = tuple(n for n in sorted(set(entries)) if re.fullmatch(pattern, n))
    got = NameIndex(entries).match(compile_pattern(pattern), all=all_matches)
    assert got == (expected if all_matches else expected[:1])


def test_public_surface_and_error_kinds_are_the_contract() -> None:
    import nameservice
    from nameservice import errors

    assert sorted(nameservice.__all__) == sorted(
        [
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
    )
    kinds = {
        errors.NameNotFoundError: "not_found",
        errors.NameTakenError: "name_taken",
        errors.InvalidNameError: "invalid_name",
        errors.InvalidPatternError: "invalid_pattern",
        errors.NoQuorumError: "no_quorum",
    }
    for cls, kind in kinds.items():
        assert cls.kind == kind
        assert issubclass(cls, errors.NameServiceError)
