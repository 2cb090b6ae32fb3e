"""The runtime's one piece of C: an atom's call through its inbox (docs/DESIGN.md §3).

``crossing.c`` does what :meth:`WasmInstance.invoke` does in Python for a call
from idle through the inbox that ends cleanly: the copy in, the crossing, the
reply out, in one C call instead of about twenty Python operations and a
ctypes call (docs/PERFORMANCE.md "Seventh round: the runtime call's two
modes"). It is compiled here, on first use, with the ``ziglang`` package that
already compiles the atoms, against this interpreter's headers, and kept in a
cache directory keyed by the source, the interpreter and the compiler; every
later process loads it from there, once its digest says it is whole.

Nothing depends on it: when it cannot be built or loaded (no headers, no
compiler, a read-only cache) the runtime logs why once and calls through
ctypes as before, with the same results. ``HERMESX_NATIVE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import pathlib
import subprocess
import sys
import sysconfig
import tempfile
import threading
from types import ModuleType

__all__ = ["crossing_module"]

log = logging.getLogger(__name__)

_SOURCE = pathlib.Path(__file__).with_name("crossing.c")
_NAME = "hermesx_crossing"
_BUILD_TIMEOUT_S = 120.0
# The build's own SHA-256 follows its last byte (the loader ignores what lies past
# the ELF's contents): a file cut short or damaged in the cache (a machine that
# died mid-write, a full disk) is built again instead of loaded, for loading a
# truncated shared object kills the process with SIGBUS.
_DIGEST_BYTES = 32
# No libc (the interpreter's is there at load), and the CPU's baseline, not this
# machine's: a cache in a home directory may serve machines with other CPUs.
_FLAGS = ("-O2", "-mcpu=baseline", "-shared", "-fPIC", "-nostdlib")
_lock = threading.Lock()
_loaded: list[ModuleType | None] = []  # empty until the first look, then [module or None]


def _cache_dir() -> pathlib.Path:
    explicit = os.environ.get("HERMESX_NATIVE_CACHE")
    if explicit:
        return pathlib.Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "hermesx" / "native"


def _target(source: bytes) -> pathlib.Path:
    """Where the build of ``source`` for this interpreter lives."""
    key = hashlib.sha256()
    key.update(source)
    key.update(" ".join(_FLAGS).encode())
    key.update(sys.version.encode())
    key.update(sys.executable.encode())
    try:
        from importlib.metadata import version

        key.update(version("ziglang").encode())
    except Exception:  # no ziglang: the build below says so
        pass
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return _cache_dir() / f"{_NAME}-{key.hexdigest()[:16]}{suffix}"


def _build(target: pathlib.Path) -> None:
    include = sysconfig.get_paths()["include"]
    if not (pathlib.Path(include) / "Python.h").exists():
        raise OSError(f"this interpreter's C headers are not installed (no {include}/Python.h)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: processes starting at once
    # each build their own and the last rename wins, never a half-written file.
    fd, tmp = tempfile.mkstemp(prefix=f".{_NAME}-", suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [sys.executable, "-m", "ziglang", "cc", *_FLAGS]
    cmd += [f"-I{include}", str(_SOURCE), "-o", tmp]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            lines = (done.stderr + done.stdout).strip().splitlines()
            raise OSError(f"the compiler failed: {lines[0] if lines else done.returncode}")
        with open(tmp, "r+b") as built:
            built.write(hashlib.sha256(built.read()).digest())
            built.flush()
            os.fsync(built.fileno())  # whole on disk before its name says it is there
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(target: pathlib.Path) -> ModuleType:
    content = target.read_bytes()
    body, digest = content[:-_DIGEST_BYTES], content[-_DIGEST_BYTES:]
    if len(content) <= _DIGEST_BYTES or hashlib.sha256(body).digest() != digest:
        raise ImportError(f"{target} is damaged (cut short or changed since it was built)")
    spec = importlib.util.spec_from_file_location(_NAME, target)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {target}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def crossing_module() -> ModuleType | None:
    """The compiled crossing (built on the first call of a machine), or None."""
    if _loaded:
        return _loaded[0]
    with _lock:
        if not _loaded:
            _loaded.append(_find())
    return _loaded[0]


def _find() -> ModuleType | None:
    if os.environ.get("HERMESX_NATIVE", "1") == "0":
        return None
    try:
        target = _target(_SOURCE.read_bytes())
        if not target.exists():
            _build(target)
            log.info("built the runtime's C crossing: %s", target)
        try:
            return _load(target)
        except ImportError:  # a damaged file in the cache: built again, once
            _build(target)
            return _load(target)
    except (OSError, ImportError, subprocess.SubprocessError) as exc:
        log.warning("the runtime calls atoms through ctypes (no C crossing): %s", exc)
        return None
