"""hermesx.runtime.build: C atoms compile to modules whose exports and imports follow ABI.md."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import wasmtime

from hermesx.core.errors import ConfigurationError
from hermesx.runtime.build import ABI_EXPORTS, SDK_DIR, build_atom, build_examples, main

ABI_MD = SDK_DIR / "ABI.md"


def _abi_tables() -> tuple[dict[str, tuple[str, bool]], dict[str, str]]:
    """(exports: name -> (signature, required), imports: name -> signature) from ABI.md."""
    exports: dict[str, tuple[str, bool]] = {}
    imports: dict[str, str] = {}
    section = ""
    for line in ABI_MD.read_text().splitlines():
        if line.startswith("## "):
            section = line
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        name = cells[0].strip("`")
        signature = cells[1].strip("`")
        if section.startswith("## Exports"):
            exports[name] = (signature, cells[2] == "yes")
        elif section.startswith("## Imports"):
            imports[name] = signature
    return exports, imports


def _arity(signature: str) -> tuple[int, int]:
    """(params, results) counted from ABI.md's `(a, b) -> c` notation."""
    match = re.fullmatch(r"\(([^)]*)\)(?:\s*->\s*(.+))?", signature)
    assert match, signature
    params = [p for p in match.group(1).split(",") if p.strip()]
    return len(params), 1 if match.group(2) else 0


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory, atoms: dict[str, Path]) -> dict[str, Path]:
    """The examples as ``build_examples`` makes them: the run's (the harness's ``atoms``,
    built by it once), copied with their times to a directory of this module's own, so
    the tests below may rebuild there."""
    out = tmp_path_factory.mktemp("atoms")
    for path in atoms.values():
        shutil.copy2(path, out / path.name)
    built = build_examples(out, quiet=True)
    return {p.stem: p for p in built if p.parent == out}


def test_abi_tables_parse() -> None:
    exports, imports = _abi_tables()
    assert set(exports) == {"memory", *ABI_EXPORTS}
    assert {n for n, (_, required) in exports.items() if required} == {
        "memory",
        "hx_abi_version",
        "hx_alloc",
        "hx_invoke",
    }
    assert {"reply", "invoke", "recv", "kv_keys", "move_to", "checkpoint"} <= set(imports)


def test_every_example_is_built(examples: dict[str, Path]) -> None:
    expected = {p.stem for p in SDK_DIR.glob("*.c")}
    assert expected >= {"counter", "kvstore", "echo", "caller", "inbox", "daemon", "mover"}
    assert set(examples) == expected
    for path in examples.values():
        assert path.stat().st_size > 0


def test_example_exports_and_imports_follow_the_abi(examples: dict[str, Path]) -> None:
    abi_exports, abi_imports = _abi_tables()
    engine = wasmtime.Engine()
    for name, path in examples.items():
        module = wasmtime.Module.from_file(engine, str(path))
        exports = {e.name: e.type for e in module.exports}
        for export, (signature, required) in abi_exports.items():
            if required and not (name == "noexport" and export == "hx_invoke"):
                assert export in exports, f"{name} lacks {export}"
            if export in exports and export != "memory":
                ty = exports[export]
                assert isinstance(ty, wasmtime.FuncType), f"{name}.{export}"
                assert (len(ty.params), len(ty.results)) == _arity(signature), f"{name}.{export}"
        assert isinstance(exports["memory"], wasmtime.MemoryType)
        for imp in module.imports:
            assert imp.module == "hx", f"{name} imports from {imp.module}"
            assert imp.name in abi_imports, f"{name} imports unknown {imp.name}"
            assert isinstance(imp.type, wasmtime.FuncType)
            assert (len(imp.type.params), len(imp.type.results)) == _arity(abi_imports[imp.name])


def test_optional_exports_only_where_the_atom_uses_them(examples: dict[str, Path]) -> None:
    engine = wasmtime.Engine()

    def names(atom: str) -> set[str]:
        return {e.name for e in wasmtime.Module.from_file(engine, str(examples[atom])).exports}

    assert "hx_main" in names("daemon") and "hx_main" not in names("counter")
    assert "hx_init" in names("counter") and "hx_init" not in names("echo")
    assert "hx_interrupt" in names("inbox") and "hx_interrupt" not in names("kvstore")
    assert "hx_invoke" not in names("noexport")


def test_atoms_keep_a_small_stack(examples: dict[str, Path]) -> None:
    # Zig's 1 MiB default stack would make every snapshot at least that big.
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module.from_file(engine, str(examples["noexport"]))
    instance = wasmtime.Instance(store, module, [])
    sp = instance.exports(store)["__stack_pointer"]
    memory = instance.exports(store)["memory"]
    assert isinstance(sp, wasmtime.Global) and isinstance(memory, wasmtime.Memory)
    assert sp.value(store) <= 65536
    assert memory.size(store) <= 2


def test_examples_are_not_rebuilt_when_up_to_date(examples: dict[str, Path]) -> None:
    # The module's examples, built once already: this test rebuilds only the counter.
    out = examples["counter"].parent
    first = build_examples(out, quiet=True)
    counter = out / "counter.wasm"
    assert counter in first
    old = counter.stat().st_mtime_ns
    os.utime(counter, ns=(old + 10**9, old + 10**9))
    stamped = counter.stat().st_mtime_ns
    assert build_examples(out, quiet=True) == first
    assert counter.stat().st_mtime_ns == stamped
    # An output older than its source is built again.
    os.utime(counter, ns=(10**9, 10**9))
    build_examples(out, quiet=True)
    assert counter.stat().st_mtime_ns > 10**9


def test_plain_c_atom_without_the_sdk_gets_its_exports(tmp_path: Path) -> None:
    src = tmp_path / "plain.c"
    src.write_text(
        "static unsigned char heap[1024];\n"
        "int hx_abi_version(void) { return 1; }\n"
        "void *hx_alloc(int len) { (void)len; return heap; }\n"
        "int hx_invoke(const char *m, int ml, const char *a, int al)\n"
        "{ (void)m; (void)ml; (void)a; (void)al; return 0; }\n"
        "int helper(void) { return 2; }\n"
    )
    out = build_atom(src, tmp_path / "plain.wasm")
    exports = {e.name for e in wasmtime.Module.from_file(wasmtime.Engine(), str(out)).exports}
    assert {"memory", "hx_abi_version", "hx_alloc", "hx_invoke"} <= exports
    assert "helper" not in exports


def test_compile_error_names_the_compiler_message(tmp_path: Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text('#include "hx.h"\nstatic int32_t f(hx_mpr *a) { return undefined_name; }\n')
    with pytest.raises(ConfigurationError) as info:
        build_atom(src, tmp_path / "broken.wasm")
    message = str(info.value)
    assert "broken.c" in message and "undefined_name" in message and "error" in message
    assert "\n" not in message
    assert not (tmp_path / "broken.wasm").exists()


def test_missing_source_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        build_atom(tmp_path / "nope.c", tmp_path / "nope.wasm")


def test_include_dirs_are_searched(tmp_path: Path) -> None:
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "answer.h").write_text("#define ANSWER 42\n")
    src = tmp_path / "uses.c"
    src.write_text(
        '#include "hx.h"\n#include "answer.h"\n'
        "static int32_t get(hx_mpr *a) { (void)a; hx_reply_int(ANSWER); return 0; }\n"
        'HX_METHODS(HX_METHOD("get", get));\n'
    )
    assert build_atom(src, tmp_path / "uses.wasm", include_dirs=[tmp_path / "inc"]).exists()


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "echo.wasm"
    assert main([str(SDK_DIR / "echo.c"), "-o", str(out)]) == 0
    assert out.exists()
    assert main([str(tmp_path / "missing.c"), "-o", str(out)]) == 1
    assert capsys.readouterr().err.startswith("error: ")
