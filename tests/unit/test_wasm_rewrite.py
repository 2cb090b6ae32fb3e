"""Every mutable global becomes exported; the module stays otherwise the same."""

from __future__ import annotations

import pytest
import wasmtime
from wat.runtime_helpers import example

from hermesx.core.errors import BadModuleError
from hermesx.runtime.rewrite import export_mutable_globals


def exports_of(wasm: bytes) -> dict[str, object]:
    module = wasmtime.Module(wasmtime.Engine(), wasm)
    return {e.name: e.type for e in module.exports}


def test_hidden_mutable_globals_get_exported_and_existing_names_are_kept() -> None:
    wasm = wasmtime.wat2wasm(
        """(module
          (import "hx" "g" (global i32))
          (global $a (mut i32) (i32.const 7))
          (global $b i64 (i64.const 1))
          (global $c (export "visible") (mut f64) (f64.const 2.5))
          (global $d (mut i64) (i64.const -3))
          (memory (export "memory") 1)
          (func (export "read") (result i32) (global.get $a))
          (start 0))""".replace("(start 0)", "")
    )
    result = export_mutable_globals(wasm)
    # Global index space: the import is 0, so $a=1, $c=3, $d=4 ($b is immutable).
    assert result.mutable_globals == ("__hx_global_1", "visible", "__hx_global_4")
    exports = exports_of(result.wasm)
    for name in result.mutable_globals:
        assert isinstance(exports[name], wasmtime.GlobalType)
    assert "read" in exports and "memory" in exports

    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    imported = wasmtime.Global(store, wasmtime.GlobalType(wasmtime.ValType.i32(), False), 0)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, result.wasm), [imported])
    ex = instance.exports(store)
    assert ex["__hx_global_1"].value(store) == 7  # type: ignore[union-attr]
    assert ex["__hx_global_4"].value(store) == -3  # type: ignore[union-attr]
    ex["__hx_global_1"].set_value(store, 11)  # type: ignore[union-attr]
    assert ex["read"](store) == 11  # type: ignore[operator]


def test_module_without_export_section_gets_one_in_the_right_place() -> None:
    wasm = wasmtime.wat2wasm(
        "(module (global $g (mut i32) (i32.const 1)) (func $f)"
        ' (data (memory 0) (i32.const 0) "x") (memory 1))'
    )
    result = export_mutable_globals(wasm)
    assert result.mutable_globals == ("__hx_global_0",)
    wasmtime.Module.validate(wasmtime.Engine(), result.wasm)
    assert "__hx_global_0" in exports_of(result.wasm)


def test_module_without_mutable_globals_is_returned_unchanged() -> None:
    wasm = wasmtime.wat2wasm('(module (global i32 (i32.const 1)) (memory (export "memory") 1))')
    assert export_mutable_globals(wasm).wasm == wasm


def test_c_atom_keeps_its_stack_pointer_export() -> None:
    result = export_mutable_globals(example("counter"))
    assert "__stack_pointer" in result.mutable_globals
    wasmtime.Module.validate(wasmtime.Engine(), result.wasm)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\x7fELF....", "magic"),
        (b"\x00asm\x0d\x00\x01\x00", "version"),
        (b"\x00asm\x01\x00\x00\x00\x06\x05\x01\x7f", "truncated"),
    ],
)
def test_non_modules_are_refused(data: bytes, needle: str) -> None:
    with pytest.raises(BadModuleError, match=needle):
        export_mutable_globals(data)
