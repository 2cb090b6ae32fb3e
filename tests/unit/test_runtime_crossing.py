"""The runtime's C crossing (hermesx/runtime/native.py): the same calls, cheaper.

An atom with an inbox is called from idle through one C function when this
machine can build it, through ctypes otherwise; the inbox tests run both ways
(their ``runtime`` fixtures use :func:`use_crossing`). Here: that the C path is
the one taken where it can be built, that a build that cannot happen leaves a
working runtime, and that an atom's answers are the same either way.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import sysconfig
from collections.abc import Iterator

import msgpack
import pytest
import wasmtime
from wat.runtime_helpers import GUID_A, example

from hermesx.core.errors import AtomTrapError, DeadlineExceededError, MethodError
from hermesx.runtime import instance, native
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost

CROSSINGS = ("c", "ctypes")
# An atom with an inbox whose calls end every way a call can: by the first letter
# of the method, spin (s), trap (t), fail with a reason in the slot (f), reply
# through hx.reply and not the slot (r), or reply in the slot (anything else).
_ENDINGS = """
(module
  (import "hx" "reply" (func $reply (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "hx_abi_version") (result i32) (i32.const 1))
  (func (export "hx_inbox") (result i32)
    (i32.store (i32.const 1028) (i32.const -1))
    (i32.store (i32.const 1032) (i32.const 256))
    (i32.const 1024))
  (func (export "hx_alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "hx_invoke") (param $m i32) (param $ml i32) (param $a i32) (param $al i32)
                             (result i32) (local $c i32)
    (local.set $c (i32.load8_u (local.get $m)))
    (if (i32.eq (local.get $c) (i32.const 0x73)) (then (loop $spin (br $spin))))
    (if (i32.eq (local.get $c) (i32.const 0x74)) (then unreachable))
    (i32.store8 (i32.const 2000) (i32.const 0xc3))
    (if (i32.eq (local.get $c) (i32.const 0x72)) (then
      (call $reply (i32.const 2000) (i32.const 1))
      (return (i32.const 0))))
    (i32.store (i32.const 1024) (i32.const 2000))
    (i32.store (i32.const 1028) (i32.const 1))
    (if (i32.eq (local.get $c) (i32.const 0x66)) (then
      (i32.store8 (i32.const 2000) (i32.const 0x21))
      (return (i32.const 1))))
    (i32.const 0)))
"""
_HEADERS = (pathlib.Path(sysconfig.get_paths()["include"]) / "Python.h").exists()


def use_crossing(which: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Atoms made after this call cross in C (``"c"``) or through ctypes."""
    if which == "ctypes":
        monkeypatch.setattr(instance, "crossing_module", lambda: None)
    elif native.crossing_module() is None:
        pytest.skip("the C crossing cannot be built on this machine")


@pytest.fixture
def fresh_native(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """native's one-per-process answer forgotten, and forgotten again after."""
    monkeypatch.setattr(native, "_loaded", [])
    yield


@pytest.fixture(params=CROSSINGS)
def runtime(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    use_crossing(request.param, monkeypatch)
    rt = Runtime(deadline_ms=500, max_payload_bytes=2000)
    yield rt
    rt.close()


@pytest.mark.skipif(not _HEADERS, reason="this interpreter's C headers are not installed")
def test_an_inbox_atom_is_called_in_c_where_the_crossing_can_be_built() -> None:
    rt = Runtime()
    try:
        atom = rt.create(rt.load(example("counter")), GUID_A, StandaloneHost())
        assert atom._inst._crossing is not None
        assert [msgpack.unpackb(atom.invoke("incr", msgpack.packb(2))) for _ in range(3)] == [
            2,
            4,
            6,
        ]
    finally:
        rt.close()


def test_a_crossing_that_cannot_be_built_leaves_the_ctypes_path(
    fresh_native: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_compiler(target: pathlib.Path) -> None:
        raise OSError("the compiler failed: no such compiler")

    monkeypatch.setenv("HERMESX_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_build", no_compiler)
    assert native.crossing_module() is None
    assert "no such compiler" in caplog.text
    rt = Runtime()
    try:
        atom = rt.create(rt.load(example("counter")), GUID_A, StandaloneHost())
        assert atom._inst._crossing is None
        assert msgpack.unpackb(atom.invoke("incr", msgpack.packb(5))) == 5
    finally:
        rt.close()


def test_the_crossing_can_be_turned_off(
    fresh_native: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERMESX_NATIVE", "0")
    assert native.crossing_module() is None


def test_an_atoms_answers_are_the_same_either_way(runtime: Runtime) -> None:
    atom = runtime.create(runtime.load(example("counter")), GUID_A, StandaloneHost())
    assert msgpack.unpackb(atom.invoke("incr", msgpack.packb(7))) == 7
    assert msgpack.unpackb(atom.invoke("get", b"")) == 7
    # Arguments past the inbox's capacity come through hx_alloc, then the inbox again.
    with pytest.raises(MethodError):
        atom.invoke("incr", msgpack.packb("x" * 1500))
    assert msgpack.unpackb(atom.invoke("incr", msgpack.packb(1))) == 8
    with pytest.raises(MethodError, match="no_such_method"):
        atom.invoke("no_such_method", b"")
    assert atom.generation == 5


def test_every_ending_of_a_call_is_the_same_either_way(runtime: Runtime) -> None:
    module = runtime.load(bytes(wasmtime.wat2wasm(_ENDINGS)))
    atom = runtime.create(module, GUID_A, StandaloneHost())
    assert atom.invoke("yes", b"") == b"\xc3"
    assert atom.invoke("reply", b"") == b"\xc3"  # through hx.reply, the slot left empty
    with pytest.raises(MethodError, match="!"):
        atom.invoke("fail", b"")
    with pytest.raises(AtomTrapError, match="unreachable"):
        atom.invoke("trap", b"")
    # The CPU budget stops a spinning call in C as through ctypes.
    with pytest.raises(DeadlineExceededError):
        atom.invoke("spin", b"")
    assert atom.invoke("yes", b"") == b"\xc3"
    assert atom.generation == 6


@pytest.mark.skipif(not _HEADERS, reason="this interpreter's C headers are not installed")
def test_a_damaged_build_in_the_cache_is_built_again(
    fresh_native: None, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("HERMESX_NATIVE_CACHE", str(tmp_path))
    target = native._target(native._SOURCE.read_bytes())
    target.write_bytes(b"not a shared object")
    module = native.crossing_module()
    assert module is not None and hasattr(module, "Crossing")
    assert target.read_bytes().startswith(b"\x7fELF")


@pytest.mark.skipif(not _HEADERS, reason="this interpreter's C headers are not installed")
def test_a_build_cut_short_in_the_cache_is_built_again_not_loaded(tmp_path: pathlib.Path) -> None:
    # A machine that died while the cache was written leaves a file cut short;
    # loading one kills the process (SIGBUS), so each start of the node would die.
    built = native.crossing_module()
    assert built is not None and built.__file__ is not None
    env = {**os.environ, "HERMESX_NATIVE_CACHE": str(tmp_path)}
    code = "from hermesx.runtime import native; print(native._target(native._SOURCE.read_bytes()))"
    target = pathlib.Path(
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    target.write_bytes(pathlib.Path(built.__file__).read_bytes()[:4096])
    code = "from hermesx.runtime import native; print(native.crossing_module() is not None)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr
    assert target.stat().st_size > 4096
