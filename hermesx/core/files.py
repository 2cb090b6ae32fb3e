"""Files and directories of a cluster are private to the user running it.

Atom state, checkpoints, logs, certificates and the name service's data of a
cluster are nobody else's business on a shared machine: every directory
hermesx makes is of mode 0700 and every file 0600. Server processes also set
the umask :data:`PRIVATE_UMASK` at start, so files made by libraries
(LMDB, ZooKeeper's JVM, gRPC) follow the same rule.
"""

from __future__ import annotations

import os
import pathlib
from typing import IO, Final

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "PRIVATE_UMASK",
    "open_private",
    "private_dir",
    "write_private",
]

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
PRIVATE_UMASK: Final = 0o077


def private_dir(path: pathlib.Path, *, parents: bool = True) -> pathlib.Path:
    """Make ``path`` (and missing parents) with mode 0700; tighten it if it exists.

    Parents that already exist are left as they are: they may be the user's
    own (a home directory, /var/lib).
    """
    missing: list[pathlib.Path] = []
    here = path
    while parents and not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)
    path.mkdir(mode=DIR_MODE, exist_ok=True)
    # mkdir's mode is masked by the umask, and an existing directory keeps its own.
    for directory in {path, *missing}:
        directory.chmod(DIR_MODE)
    return path


def write_private(path: pathlib.Path, data: str | bytes) -> None:
    """Write ``path`` whole, created with mode 0600 (and tightened if it existed)."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), FILE_MODE)
        handle.write(raw)


def open_private(path: pathlib.Path, mode: str = "ab") -> IO[bytes]:
    """Open ``path`` for appending (or writing), created with mode 0600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, mode)
