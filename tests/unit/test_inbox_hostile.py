"""A hostile atom against the inbox (atoms/ABI.md "The inbox").

Each test is an attack an atom's author (or a bug) could make on the inbox's
header and reply slot: a bad address or capacity, a signature or an
``hx_inbox`` that misbehaves, slots with impossible lengths, a slot left bad
while a nested entry runs, memory grown under the slot. The promise held:
one clear error for the call at fault (or the module), and the atom, its
other calls, its handlers and its recorded replies unaffected.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import wasmtime
from test_runtime_crossing import CROSSINGS, use_crossing
from wat.runtime_helpers import GUID_A, WAT_DIR, ScriptedHost

from hermesx.core.errors import AtomTrapError, BadModuleError
from hermesx.runtime.atom import Atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import CallContext, StandaloneHost

TEXT = (WAT_DIR / "hostile_inbox.wat").read_text()
HX_INBOX = """  (func (export "hx_inbox") (result i32)
    (global.set $asked (i32.add (global.get $asked) (i32.const 1)))
    (if (result i32) (i32.eq (global.get $asked) (i32.const 1))
      (then (i32.const 1024)) (else (i32.const 60000))))"""


@pytest.fixture(params=CROSSINGS)
def runtime(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    use_crossing(request.param, monkeypatch)  # each test both ways: in C and through ctypes
    rt = Runtime(deadline_ms=500, memory_limit_bytes=8 * 2**20, max_payload_bytes=2000)
    yield rt
    rt.close()


def _atom(
    runtime: Runtime, text: str = TEXT, host: StandaloneHost | None = None, reentrant: bool = False
) -> Atom:
    module = runtime.load(bytes(wasmtime.wat2wasm(text)))
    return runtime.create(module, GUID_A, host or StandaloneHost(), reentrant=reentrant)


def test_hx_inbox_is_asked_once_whatever_it_answers_later(runtime: Runtime) -> None:
    atom = _atom(runtime)
    for n in range(3):
        assert atom.invoke("echo", b"call %d" % n) == b"call %d" % n


def test_a_misaligned_inbox_serves_as_well(runtime: Runtime) -> None:
    text = TEXT.replace("1024", "1025").replace("1028", "1029").replace("1032", "1033")
    atom = _atom(runtime, text)
    assert atom.invoke("echo", b"odd") == b"odd"
    assert atom.invoke("m", b"") == b"M"


@pytest.mark.parametrize("cap", [r"\ff\ff\ff\7f", r"\f9\ff\ff\ff", r"\f1\fb\00\00"])
def test_an_input_capacity_negative_or_past_the_memory_is_a_bad_module(
    runtime: Runtime, cap: str
) -> None:
    text = TEXT.replace(r"\ff\ff\ff\ff\00\01\00\00", r"\ff\ff\ff\ff" + cap)
    with pytest.raises(BadModuleError, match="hx_inbox returned a bad buffer"):
        _atom(runtime, text)


@pytest.mark.parametrize(
    "func",
    [
        '(func (export "hx_inbox") (param i32) (result i32) (i32.const 1024))',
        '(func (export "hx_inbox") (result i64) (i64.const 1024))',
        '(func (export "hx_inbox"))',
    ],
)
def test_hx_inbox_of_the_wrong_type_is_a_bad_module(runtime: Runtime, func: str) -> None:
    with pytest.raises(BadModuleError, match="hx_inbox with the wrong type"):
        _atom(runtime, TEXT.replace(HX_INBOX, "  " + func))


@pytest.mark.parametrize("body", ["(unreachable)", "(loop $spin (br $spin)) (i32.const 1024)"])
def test_hx_inbox_that_traps_or_spins_is_a_bad_module(runtime: Runtime, body: str) -> None:
    text = TEXT.replace(HX_INBOX, f'  (func (export "hx_inbox") (result i32) {body})')
    with pytest.raises(BadModuleError, match="hx_inbox failed"):
        _atom(runtime, text)


def test_a_negative_slot_length_fails_that_call_only(runtime: Runtime) -> None:
    atom = _atom(runtime)
    with pytest.raises(AtomTrapError, match="reply slot"):
        atom.invoke("k", b"")
    assert atom.invoke("echo", b"after") == b"after"


def test_a_reply_in_memory_grown_during_the_call_is_read(runtime: Runtime) -> None:
    atom = _atom(runtime)
    assert atom.invoke("grow", b"") == b"G"
    assert atom.invoke("grow", b"") == b"G"
    assert atom.invoke("echo", b"x" * 300) == b"x" * 300  # past the capacity: hx_alloc


def test_the_atom_cannot_widen_its_input_capacity(runtime: Runtime) -> None:
    atom = _atom(runtime)
    assert atom.invoke("cap", b"") == b"C"
    # Were the new capacity believed, these inputs would be written over the
    # reply buffer at 2048 and beyond; they go to hx_alloc's arena instead.
    payload = bytes(range(256)) * 6
    assert atom.invoke("echo", payload[:1000]) == payload[:1000]
    assert atom._inst._inbox_cap == 256


def test_an_idle_handlers_slot_is_not_the_next_calls_reply(runtime: Runtime) -> None:
    atom = _atom(runtime)
    atom.deliver(7, b"")  # idle: the handler runs on the runtime's idle pool
    end = time.monotonic() + 10
    while atom.invoke("h", b"") != b"I" and time.monotonic() < end:
        time.sleep(0.01)
    atom.deliver(7, b"")
    time.sleep(0.1)
    assert atom.invoke("m", b"") == b"M"


def test_a_bad_outer_slot_fails_the_outer_call_not_the_nested_one(runtime: Runtime) -> None:
    inner: list[bytes] = []

    def on_invoke(ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        inner.append(
            atom.invoke("echo", b"inner", chain=ctx.chain, open_chain=ctx.open_chain, timeout=5)
        )
        return b"\xc0"

    atom = _atom(runtime, host=ScriptedHost(on_invoke), reentrant=True)
    with pytest.raises(AtomTrapError, match="reply slot"):
        atom.invoke("q", b"")
    assert inner == [b"inner"]
    assert atom.invoke("echo", b"after") == b"after"


def test_a_bad_outer_slot_does_not_drop_a_handler(runtime: Runtime) -> None:
    def on_invoke(ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        atom.deliver(7, b"")  # queued: the handler runs at the call's yield
        return b"\xc0"

    atom = _atom(runtime, host=ScriptedHost(on_invoke))
    with pytest.raises(AtomTrapError, match="reply slot"):
        atom.invoke("q", b"")
    assert atom.invoke("h", b"") == b"I"  # the handler ran


def test_a_nested_call_that_traps_after_writing_the_slot_leaves_the_outer_reply(
    runtime: Runtime,
) -> None:
    def on_invoke(ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        with pytest.raises(AtomTrapError):
            atom.invoke("trap", b"", chain=ctx.chain, open_chain=ctx.open_chain, timeout=5)
        return b"\xc0"

    atom = _atom(runtime, host=ScriptedHost(on_invoke), reentrant=True)
    assert atom.invoke("outer", b"") == b"O"


def test_a_retried_request_gets_its_first_slot_reply_not_a_later_one(runtime: Runtime) -> None:
    atom = _atom(runtime)
    first = atom.invoke("echo", b"first", request_id="r-1")
    atom.invoke("echo", b"later", request_id="r-2")  # overwrites the reply buffer
    assert first == b"first"
    assert atom.invoke("echo", b"first", request_id="r-1") == b"first"
