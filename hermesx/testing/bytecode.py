"""Compiled bytecode for the processes a test run starts, when the run may not write any.

With ``PYTHONDONTWRITEBYTECODE`` set, every node, storesite and CLI process a
test starts compiles the project's modules from source again (~0.25 s of CPU
each, hundreds of processes in a run). The run compiles them once into a
directory of its own and points its children at it with
``PYTHONPYCACHEPREFIX``: the checkout stays free of ``__pycache__``, as the
setting asks, and the children only read. Without that setting the children
write ``__pycache__`` as usual and nothing is done here.
"""

from __future__ import annotations

import compileall
import os
import pathlib
import shutil
import sys
import tempfile

__all__ = ["PACKAGES", "compile_for_children", "remove_compiled"]

# The packages of the processes tests start (``python -m hermesx …``).
PACKAGES = ("hermesx", "storesite", "nameservice")
PREFIX = "PYTHONPYCACHEPREFIX"


def compile_for_children(root: pathlib.Path) -> pathlib.Path | None:
    """Compile ``root``'s packages into a new directory named in ``PYTHONPYCACHEPREFIX``.

    Returns the directory, or None when nothing was needed (bytecode may be
    written, or the caller chose a prefix already).
    """
    if not sys.flags.dont_write_bytecode or os.environ.get(PREFIX):
        return None
    cache = pathlib.Path(tempfile.mkdtemp(prefix="hermesx-pyc-"))
    old = sys.pycache_prefix
    # compileall names each file through importlib.util.cache_from_source,
    # which honours this process's prefix.
    sys.pycache_prefix = str(cache)
    try:
        for package in PACKAGES:
            if (root / package).is_dir():
                compileall.compile_dir(root / package, quiet=2)
    finally:
        sys.pycache_prefix = old
    os.environ[PREFIX] = str(cache)
    return cache


def remove_compiled(cache: pathlib.Path | None) -> None:
    """Forget and remove what :func:`compile_for_children` made."""
    if cache is None:
        return
    if os.environ.get(PREFIX) == str(cache):
        del os.environ[PREFIX]
    shutil.rmtree(cache, ignore_errors=True)
