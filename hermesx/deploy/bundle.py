"""The bundle `hermesx deploy` ships: the project, its runtime dependencies, the atoms.

See docs/DESIGN.md §8 "A cluster over several hosts". A host needs no
package index and no compiler: the bundle is one tar of a ``site-packages``
directory made from what is installed here — the files of every
distribution the project needs at run time (its ``dependencies`` in
``pyproject.toml`` and theirs, as their installed ``RECORD`` lists them),
the ``hermesx``, ``storesite`` and ``nameservice`` packages from the source
tree, and the built example atoms under ``hermesx-atoms/``. The C toolchain
(``ziglang``) and the protocol compiler (``grpcio-tools``) stay behind:
hosts run atoms built here. A host unpacks it into a fresh venv of the same
Python version (``python -m venv --without-pip``: about a second), so an
install is a copy and an unpack, not a resolution and a download.

The bundle is named by the SHA-256 of its contents; a host that already has
that release skips the copy (``deploy up`` again, or ``upgrade`` with nothing
changed).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import io
import logging
import pathlib
import re
import sys
import tarfile
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hermesx.core.errors import ConfigurationError

__all__ = ["BUILD_ONLY", "Bundle", "build_bundle", "runtime_distributions"]

log = logging.getLogger(__name__)

# Needed to build atoms and regenerate the wire code, not to run a cluster.
BUILD_ONLY = frozenset({"ziglang", "grpcio-tools"})
PACKAGES = ("hermesx", "storesite", "nameservice")
ATOMS_DIR = "hermesx-atoms"
_SKIP = re.compile(r"(^|/)__pycache__(/|$)|\.pyc$")
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True, slots=True)
class Bundle:
    """A built bundle: its file, its release name and what went in."""

    path: pathlib.Path
    release: str
    python: str  # "3.11": a host's venv must be of this version
    distributions: tuple[str, ...]
    size: int


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project_root() -> pathlib.Path:
    import hermesx

    return pathlib.Path(hermesx.__file__).resolve().parent.parent


def _requirements(root: pathlib.Path) -> list[str]:
    """The project's run-time requirements: from its pyproject.toml, else its metadata."""
    pyproject = root / "pyproject.toml"
    if pyproject.exists():
        with pyproject.open("rb") as handle:
            return list(tomllib.load(handle)["project"]["dependencies"])
    return list(metadata.requires("hermesx") or [])


def _name_of(requirement: str) -> str | None:
    if ";" in requirement and "extra ==" in requirement.split(";", 1)[1]:
        return None  # an optional extra's requirement
    found = _REQUIREMENT_NAME.match(requirement)
    return _normal(found.group(1)) if found else None


def runtime_distributions(root: pathlib.Path | None = None) -> list[metadata.Distribution]:
    """The installed distributions the project needs at run time, dependencies included."""
    wanted = [n for r in _requirements(root or _project_root()) if (n := _name_of(r))]
    seen: dict[str, metadata.Distribution] = {}
    # (name, whether a marker makes it conditional, e.g. `; python_version < "3.11"`)
    queue = [(n, False) for n in wanted if n not in BUILD_ONLY]
    while queue:
        name, conditional = queue.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as exc:
            if conditional:
                # Hosts run this Python on this platform (checked at install), so a
                # marker that left it out here leaves it out there too.
                continue
            raise ConfigurationError(
                f"cannot bundle the project: its dependency {name} is not installed here"
            ) from exc
        seen[name] = dist
        for requirement in dist.requires or []:
            dep = _name_of(requirement)
            if dep and dep not in seen and dep not in BUILD_ONLY:
                queue.append((dep, ";" in requirement))
    return [seen[n] for n in sorted(seen)]


def _distribution_files(dist: metadata.Distribution) -> Iterator[tuple[pathlib.Path, str]]:
    """(file on disk, path inside site-packages) of one installed distribution."""
    base = pathlib.Path(str(dist.locate_file("")))
    for entry in dist.files or []:
        relative = str(entry)
        if relative.startswith("..") or _SKIP.search(relative):
            continue  # scripts in bin/, caches
        source = base / relative
        if source.is_file():
            yield source, relative


def _project_files(root: pathlib.Path) -> Iterator[tuple[pathlib.Path, str]]:
    for package in PACKAGES:
        for source in sorted((root / package).rglob("*")):
            relative = source.relative_to(root).as_posix()
            if source.is_file() and not _SKIP.search(relative):
                yield source, relative
    for atom in sorted((root / "atoms" / "build").glob("*.wasm")):
        yield atom, f"{ATOMS_DIR}/{atom.name}"


def _add(tar: tarfile.TarFile, files: Iterable[tuple[pathlib.Path, str]]) -> None:
    for source, name in files:
        info = tar.gettarinfo(str(source), arcname=name)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0  # the release name depends on the contents only
        with source.open("rb") as handle:
            tar.addfile(info, handle)


def build_bundle(directory: pathlib.Path) -> Bundle:
    """Build the bundle into ``directory`` (kept there: a later deploy reuses an equal one)."""
    root = _project_root()
    dists = runtime_distributions(root)
    own = {_normal(p) for p in PACKAGES}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dist in dists:
            if _normal(dist.metadata["Name"]) not in own:
                _add(tar, _distribution_files(dist))
        _add(tar, _project_files(root))
    data = buffer.getvalue()
    release = hashlib.sha256(data).hexdigest()[:16]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bundle-{release}.tar"
    if not path.exists():
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(path)
    for old in directory.glob("bundle-*.tar"):
        if old != path:
            old.unlink(missing_ok=True)
    names = tuple(f"{d.metadata['Name']}=={d.version}" for d in dists)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    log.info("bundle %s: %d bytes, Python %s, %s", release, len(data), python, ", ".join(names))
    return Bundle(path, release, python, names, len(data))
