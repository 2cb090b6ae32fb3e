"""``hermesx run``: one call to an atom, in-process, without a cluster.

The atom is created in a private :class:`Runtime` with a
:class:`StandaloneHost` (no name service, no other atoms), called once, and
dropped with the runtime.
"""

from __future__ import annotations

import pathlib

from hermesx.core.errors import ConfigurationError
from hermesx.core.identity import GUID
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost

__all__ = ["run_once"]


def run_once(wasm_path: pathlib.Path, method: str, args: bytes, init_args: bytes = b"") -> bytes:
    """``hermesx run``: create the atom in-process (no cluster) and call one method."""
    try:
        wasm = pathlib.Path(wasm_path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read module {wasm_path}: {exc.strerror}") from exc
    runtime = Runtime()
    try:
        module = runtime.load(wasm)
        atom = runtime.create(module, str(GUID.new("local")), StandaloneHost(), init_args)
        return atom.invoke(method, args)
    finally:
        runtime.close()
