"""Lookups by pattern over atom names and scoped aliases (docs/DESIGN.md §7).

A pattern is an RE2 regular expression (linear time) matched against the
whole name or alias (:mod:`nameservice.patterns`). :class:`Lookups` answers
from the watched cache's child indexes and keeps each final answer while
its area (the names directory, or one alias scope) is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nameservice.cache import ABSENT, WatchedCache
from nameservice.patterns import compile_pattern, validate_name

__all__ = ["Lookups", "parse_guid"]


def parse_guid(_name: str, raw: bytes, _stat: Any = None) -> str:
    """The GUID a znode holds (a name's binding, an atom's home)."""
    return raw.decode(errors="replace")


class Lookups:
    """Pattern lookups over the names in ``names_dir`` and the scopes in ``aliases_dir``."""

    def __init__(self, cache: WatchedCache, names_dir: str, aliases_dir: str) -> None:
        self._cache = cache
        self._names_dir = names_dir
        self._name_prefix = names_dir + "/"
        self._aliases_dir = aliases_dir

    def lookup(self, pattern: str, *, scope: str | None = None, all: bool = False) -> list[str]:
        """GUIDs whose name (scope None) or alias in ``scope`` fully matches ``pattern``."""
        compiled = compile_pattern(pattern)
        if scope is None:
            pairs = self._lookup_names(compiled.text, all=all)
            return sorted({guid for _, guid in pairs}) if all else [guid for _, guid in pairs[:1]]
        validate_name(scope, "alias scope")
        cache = self._cache
        area = f"{self._aliases_dir}/{scope}"
        key = (area, compiled.text, all)
        version = cache.lookup_version(area)
        hit = cache.remembered_lookup(key, version)
        if hit is not None:
            return list(hit)
        index = cache.read_children(area)
        matched = index.match(compiled, all=all)
        if not all and matched:
            # The first alias in order may have lost its last GUID a moment
            # ago; then look further.
            first = cache.read_children(f"{area}/{matched[0]}")
            result = (
                [first.names[0]] if len(first) else self.lookup(pattern, scope=scope, all=True)[:1]
            )
        else:
            found = cache.read_children_many([f"{area}/{alias}" for alias in matched])
            guids: set[str] = set()
            for children in found.values():
                guids.update(children.names)
            result = sorted(guids)
        cache.remember_lookup(key, version, tuple(result))
        return result

    def lookup_names(self, pattern: str, *, all: bool = False) -> list[tuple[str, str]]:
        """(name, GUID) pairs whose name fully matches ``pattern``, sorted by name."""
        return self._lookup_names(compile_pattern(pattern).text, all=all)

    def names_to_guids(self, names: Iterable[str]) -> dict[str, str]:
        """The GUIDs bound to ``names`` (names unbound meanwhile are left out)."""
        paths = {name: self._name_prefix + name for name in names}
        found = self._cache.read_data_many(paths.values(), parse_guid)
        return {name: found[path] for name, path in paths.items() if found[path] is not ABSENT}

    def _lookup_names(self, pattern: str, *, all: bool) -> list[tuple[str, str]]:
        cache = self._cache
        compiled = compile_pattern(pattern)
        key = (self._names_dir, pattern, all)
        version = cache.lookup_version(self._names_dir)
        hit = cache.remembered_lookup(key, version)
        if hit is not None:
            return list(hit)
        index = cache.read_children(self._names_dir)
        matched = index.match(compiled, all=all)
        guids = self.names_to_guids(matched)
        if not all and matched and not guids:
            # Unbound a moment ago: fall back to the full scan.
            return self._lookup_names(pattern, all=True)[:1]
        pairs = [(name, guids[name]) for name in matched if name in guids]
        cache.remember_lookup(key, version, tuple(pairs))
        return pairs
