"""The house rules a newcomer relies on: small classes, documented modules, docs that resolve."""

from __future__ import annotations

import ast
import functools
import pathlib
import re
from collections.abc import Iterable, Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("hermesx", "storesite", "nameservice")
MAX_CLASS_LINES = 350


def _sources() -> list[pathlib.Path]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "proto" not in path.relative_to(ROOT).parts:
                found.append(path)
    return found


@functools.cache
def _tree(path: pathlib.Path) -> ast.Module:
    """A source's syntax tree, parsed once for every test here."""
    return ast.parse(path.read_text())


# The fields that hold statements: a class statement is only ever in one of these.
_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")


def _classes(nodes: Iterable[ast.AST]) -> Iterator[ast.ClassDef]:
    """Every class statement in ``nodes`` and the blocks inside them, nested ones too
    (only statements are visited: no expression holds one)."""
    for node in nodes:
        if isinstance(node, ast.ClassDef):
            yield node
        for block in _BLOCKS:
            inner = getattr(node, block, None)
            if isinstance(inner, list):
                yield from _classes(inner)


def test_no_class_is_over_the_size_a_reader_can_hold() -> None:
    too_big = []
    for path in _sources():
        for node in _classes(_tree(path).body):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_CLASS_LINES:
                too_big.append(f"{path.relative_to(ROOT)}: {node.name} ({lines} lines)")
    assert not too_big, "classes over 350 lines: " + ", ".join(too_big)


def test_every_module_says_what_it_is_for() -> None:
    silent = [
        str(path.relative_to(ROOT)) for path in _sources() if not ast.get_docstring(_tree(path))
    ]
    assert not silent, "modules without a docstring: " + ", ".join(silent)


DOCS = ["README.md", "docs/DESIGN.md", "docs/ARCHITECTURE.md", "atoms/README.md", "atoms/ABI.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS)
def test_document_links_resolve_inside_the_repository(doc: str) -> None:
    path = ROOT / doc
    assert path.is_file(), f"{doc} is missing"
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        resolved = (path.parent / target).resolve()
        if not resolved.exists() or not resolved.is_relative_to(ROOT):
            broken.append(target)
    assert not broken, f"{doc} links to what is not in the repository: {broken}"


def test_code_cites_the_design_inside_the_repository() -> None:
    stray = []
    for path in _sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(?<![\w/])DESIGN\.md", line) or "../shared" in line:
                stray.append(f"{path.relative_to(ROOT)}:{number}")
    assert not stray, "citations outside docs/DESIGN.md: " + ", ".join(stray)
