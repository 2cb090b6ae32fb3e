"""Compiled bytecode for the processes a test run starts, when the run may not write any.

With ``PYTHONDONTWRITEBYTECODE`` set, every node, storesite and CLI process a
test starts compiles the project's modules from source again (~0.3 s of CPU
each, and a run starts hundreds). The run therefore gives its children a
bytecode cache of its own (``PYTHONPYCACHEPREFIX``, a temporary directory
removed at the end) and lets them write there: the first child compiles what
it imports, the others read it. Nothing is written beside the sources, as the
setting asks. A bare prefix would not do: Python then looks for *every*
module's bytecode there, the standard library's too, and with writing off
would compile all of it in every child.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile

__all__ = ["cache_for_children", "remove_cache"]

PREFIX = "PYTHONPYCACHEPREFIX"
DONT_WRITE = "PYTHONDONTWRITEBYTECODE"


def cache_for_children() -> pathlib.Path | None:
    """Point the children of this run at a new bytecode cache they may write.

    Returns the cache, or None when nothing was needed: bytecode may be
    written as usual, or a prefix was chosen already.
    """
    if not sys.flags.dont_write_bytecode or os.environ.get(PREFIX):
        return None
    cache = pathlib.Path(tempfile.mkdtemp(prefix="hermesx-pyc-"))
    os.environ[PREFIX] = str(cache)
    os.environ.pop(DONT_WRITE, None)
    return cache


def remove_cache(cache: pathlib.Path | None) -> None:
    """Undo :func:`cache_for_children` and remove its cache."""
    if cache is None:
        return
    if os.environ.get(PREFIX) == str(cache):
        del os.environ[PREFIX]
        os.environ[DONT_WRITE] = "1"
    shutil.rmtree(cache, ignore_errors=True)
