"""Atoms get no host access beyond the ``hx`` imports of ABI v1 (docs/DESIGN.md §3).

No WASI, no ``env`` functions, no imported memories or tables: the only way an
atom reaches outside its own instance is through the syscalls listed in
hermesx.runtime.abi.IMPORTS, and a module asking for anything else is refused at load.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import wasmtime

from hermesx.core import codec
from hermesx.core.errors import BadModuleError
from hermesx.runtime import abi
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost

# The reviewed syscall surface: adding a host capability must change this list.
REVIEWED_SYSCALLS = {
    "reply",
    "log",
    "now_ms",
    "self_guid",
    "node_name",
    "invoke",
    "invoke_async",
    "send",
    "recv",
    "yield",
    "kv_get",
    "kv_put",
    "kv_del",
    "kv_keys",
    "lookup",
    "alias_add",
    "alias_remove",
    "move_to",
    "checkpoint",
}

_ATOM = (
    '(memory (export "memory") 1)'
    '(func (export "hx_abi_version") (result i32) (i32.const 1))'
    '(func (export "hx_alloc") (param i32) (result i32) (i32.const 1024))'
    '(func (export "hx_invoke") (param i32 i32 i32 i32) (result i32) (i32.const 0))'
)


def _module(imports: str) -> bytes:
    return bytes(wasmtime.wat2wasm(f"(module {imports} {_ATOM})"))


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    rt = Runtime(deadline_ms=300, memory_limit_bytes=8 * 2**20)
    yield rt
    rt.close()


def test_the_syscall_surface_is_the_reviewed_one() -> None:
    assert set(abi.IMPORTS) == REVIEWED_SYSCALLS


@pytest.mark.parametrize(
    "imports",
    [
        '(import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))',  # noqa: E501
        '(import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))',
        '(import "wasi_snapshot_preview1" "environ_get" (func (param i32 i32) (result i32)))',
        '(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))',
        '(import "wasi_unstable" "fd_write" (func (param i32 i32 i32 i32) (result i32)))',
        '(import "env" "system" (func (param i32) (result i32)))',
        '(import "env" "memory" (memory 1))',
        '(import "hx" "memory" (memory 1))',
        '(import "hx" "open" (func (param i32 i32) (result i32)))',
    ],
    ids=[
        "wasi-files",
        "wasi-sockets",
        "wasi-environment",
        "wasi-exit",
        "old-wasi",
        "env-function",
        "env-memory",
        "hx-memory",
        "hx-unknown",
    ],
)
def test_a_module_asking_for_host_access_is_refused(runtime: Runtime, imports: str) -> None:
    with pytest.raises(BadModuleError):
        runtime.load(_module(imports))


def test_an_atom_using_every_syscall_loads_and_runs(runtime: Runtime) -> None:
    declared = (
        " ".join(
            f'(import "hx" "{name}" (func (param {" ".join(_wat(params))}) (result {" ".join(_wat(results))})))'  # noqa: E501
            for name, (params, results) in abi.IMPORTS.items()
        )
        .replace("(param )", "")
        .replace("(result )", "")
    )
    loaded = runtime.load(_module(declared))

    assert loaded.imports == tuple(abi.IMPORTS)
    atom = runtime.create(loaded, "local:" + "d" * 32, StandaloneHost())
    try:
        assert codec.unpack(atom.invoke("anything", codec.pack(None))) is None
    finally:
        atom.close()


def _wat(signature: str) -> list[str]:
    return ["i32" if c == "i" else "i64" for c in signature]
