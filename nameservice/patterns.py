"""Name validation and bounded-cost pattern lookups (docs/DESIGN.md §7).

Lookup patterns are google-re2 regular expressions matched against the whole
name or alias (full match). RE2 runs in time linear in the text, so a hostile
pattern such as ``(a*)*b`` cannot stall the name service; patterns that are
too long or compile to too large a program are refused with
:class:`InvalidPatternError`.

Matching 100,000 names one RE2 call at a time costs ~1 µs of Python overhead
per name, so a :class:`NameIndex` keeps its names sorted in one newline-joined
buffer and scans it with a single multi-line RE2 search. Names never contain a
newline and the buffer pattern is compiled with ``never_nl``, so every match is
exactly one whole name. Results are cached per pattern on the index, and an
index is immutable: a change to the set of names builds a new index, which
drops the cached results with it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import re2

from nameservice.errors import InvalidNameError, InvalidPatternError

__all__ = [
    "MAX_NAME_LEN",
    "MAX_PATTERN_LEN",
    "MAX_PROGRAM_SIZE",
    "CompiledPattern",
    "NameIndex",
    "compile_pattern",
    "validate_guid",
    "validate_name",
]

MAX_NAME_LEN = 128
MAX_GUID_LEN = 256
MAX_PATTERN_LEN = 256
# RE2 program size (instructions) and compile memory: bound the cost of one
# pattern so a client cannot make the name service build a huge automaton.
MAX_PROGRAM_SIZE = 5000
MAX_PATTERN_MEMORY = 8 << 20

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Text anchors and turning multi-line mode off change meaning once the
# pattern runs over the joined buffer; such patterns are matched name by name.
_BUFFER_UNSAFE = re.compile(r"\\[Az]|\(\?[a-zA-Z]*-[a-zA-Z]*m")
_RESULT_CACHE_SIZE = 64


def validate_name(name: Any, what: str = "name") -> str:
    """Return ``name`` if it is a valid node, storesite, atom, scope or alias name.

    Names become ZooKeeper path segments, so they cannot hold ``/`` and must
    be short; they are also kept to characters a shell user can type.
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"{what} is empty")
    if len(name) > MAX_NAME_LEN:
        raise InvalidNameError(f"{what} {name[:20]!r}... is longer than {MAX_NAME_LEN} characters")
    if not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"{what} {name!r} may hold only letters, digits, '.', '_' and '-' "
            "and must start with a letter or digit"
        )
    return name


def validate_guid(guid: Any) -> str:
    """Return ``guid`` if it can be a path segment (hermesx checks its exact form)."""
    if not isinstance(guid, str) or not guid:
        raise InvalidNameError("GUID is empty")
    if len(guid) > MAX_GUID_LEN:
        raise InvalidNameError(f"GUID {guid[:20]!r}... is longer than {MAX_GUID_LEN} characters")
    if guid in (".", "..") or any(c == "/" or c.isspace() or not c.isprintable() for c in guid):
        raise InvalidNameError(f"GUID {guid!r} may not hold '/', spaces or control characters")
    return guid


def _options(*, buffer: bool) -> Any:
    options = re2.Options()
    options.max_mem = MAX_PATTERN_MEMORY
    options.log_errors = False
    if buffer:
        options.never_nl = True
        options.never_capture = True
    return options


@dataclass(frozen=True, slots=True)
class CompiledPattern:
    """A validated pattern, ready to match one name or a whole :class:`NameIndex`."""

    text: str
    single: Any  # re2 pattern for one name (full match)
    buffer: Any | None  # re2 pattern over the joined buffer; None: match name by name

    def fullmatch(self, name: str) -> bool:
        return self.single.fullmatch(name) is not None


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> CompiledPattern:
    """Compile a lookup pattern, or raise :class:`InvalidPatternError` naming it."""
    if not isinstance(pattern, str) or not pattern:
        raise InvalidPatternError("lookup pattern is empty")
    if len(pattern) > MAX_PATTERN_LEN:
        raise InvalidPatternError(
            f"lookup pattern {pattern[:20]!r}... is longer than {MAX_PATTERN_LEN} characters"
        )
    try:
        single = re2.compile(pattern, _options(buffer=False))
    except re2.error as exc:
        raise InvalidPatternError(
            f"lookup pattern {pattern!r} is not a valid regular expression: {exc}"
        ) from exc
    if single.programsize > MAX_PROGRAM_SIZE:
        raise InvalidPatternError(
            f"lookup pattern {pattern!r} is too costly "
            f"(program size {single.programsize} > {MAX_PROGRAM_SIZE})"
        )
    buffer = None
    if not _BUFFER_UNSAFE.search(pattern):
        # The pattern compiled alone, so wrapping it cannot change its meaning
        # (an unbalanced ')' would have failed above).
        wrapped = b"(?m)^(?:" + pattern.encode() + b")$"
        try:
            buffer = re2.compile(wrapped, _options(buffer=True))
        except re2.error:
            buffer = None
    return CompiledPattern(pattern, single, buffer)


class NameIndex:
    """An immutable, sorted set of names that answers pattern lookups in one scan."""

    __slots__ = ("_buffer", "_names", "_results")

    def __init__(self, names: Iterable[str]) -> None:
        self._names: tuple[str, ...] = tuple(sorted(set(names)))
        # Built on the first pattern lookup: most indexes (an alias's GUIDs)
        # are only ever listed, and 100,000 of them must stay small.
        self._buffer: bytes | None = None
        self._results: dict[tuple[str, bool], tuple[str, ...]] | None = None

    def __len__(self) -> int:
        return len(self._names)

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def match(self, pattern: CompiledPattern, *, all: bool) -> tuple[str, ...]:
        """Names that fully match ``pattern``, sorted; with ``all=False`` at most the first."""
        key = (pattern.text, all)
        if self._results is None:
            self._results = {}
        cached = self._results.get(key)
        if cached is not None:
            return cached
        result = self._scan(pattern, all=all)
        if len(self._results) >= _RESULT_CACHE_SIZE:
            self._results.clear()
        self._results[key] = result
        return result

    def _scan(self, pattern: CompiledPattern, *, all: bool) -> tuple[str, ...]:
        if pattern.buffer is not None and self._names:
            if self._buffer is None:
                self._buffer = "\n".join(self._names).encode()
            if all:
                found = pattern.buffer.findall(self._buffer)
            else:
                first = pattern.buffer.search(self._buffer)
                found = [] if first is None else [first.group()]
            # never_nl should make a match across names impossible; if one
            # slips through, the name-by-name scan below is the reference.
            if not any(b"\n" in item for item in found):
                return tuple(item.decode() for item in found if item)
        matched: list[str] = []
        for name in self._names:
            if pattern.fullmatch(name):
                matched.append(name)
                if not all:
                    break
        return tuple(matched)
