"""The inbox (atoms/ABI.md "The inbox"): a call's inputs and reply without extra crossings.

An atom with an inbox gets a call's inputs there and leaves its reply in the
inbox's slot; these tests hold the rules a user's atom relies on: the reply
is the last one set, whichever way, and stays the call's own across nested
entries (handlers, reentrant calls), traps and bad slots fail that call only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import wasmtime
from test_runtime_crossing import CROSSINGS, use_crossing
from wat.runtime_helpers import GUID_A, WAT_DIR, ScriptedHost, example, wat

from hermesx.core import codec
from hermesx.core.errors import AtomTrapError, BadModuleError, PayloadTooLargeError
from hermesx.runtime.atom import Atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import CallContext, StandaloneHost

INBOX = 1024


@pytest.fixture(params=CROSSINGS)
def runtime(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    use_crossing(request.param, monkeypatch)  # each test both ways: in C and through ctypes
    rt = Runtime(deadline_ms=2000, memory_limit_bytes=8 * 2**20, max_payload_bytes=2000)
    yield rt
    rt.close()


@pytest.fixture
def atom(runtime: Runtime) -> Atom:
    return runtime.create(runtime.load(wat("inbox")), GUID_A, StandaloneHost())


def test_a_call_from_idle_gets_its_inputs_in_the_inbox(atom: Atom) -> None:
    where = int.from_bytes(atom.invoke("where", b"\x01"), "little")
    assert where == INBOX + 16 + len("where")
    assert atom.invoke("echo", b"\x92\x01\x02") == b"\x92\x01\x02"


def test_inputs_over_the_capacity_come_from_hx_alloc(atom: Atom) -> None:
    where = int.from_bytes(atom.invoke("where", b"x" * 300), "little")
    assert where >= 4096
    assert atom.invoke("echo", b"y" * 300) == b"y" * 300


def test_no_reply_is_nil_and_a_trap_leaves_no_reply_behind(atom: Atom) -> None:
    assert atom.invoke("z", b"") == b"\xc0"
    with pytest.raises(AtomTrapError):
        atom.invoke("trap", b"")
    assert atom.invoke("z", b"") == b"\xc0"  # not the trapped call's "T"


def test_the_last_reply_wins_slot_then_import(atom: Atom) -> None:
    assert atom.invoke("import", b"") == b"M"
    assert atom.invoke("z", b"") == b"\xc0"


def test_a_bad_slot_fails_that_call_only(atom: Atom) -> None:
    with pytest.raises(PayloadTooLargeError, match="60000 bytes"):
        atom.invoke("big", b"")
    with pytest.raises(AtomTrapError, match="reply slot"):
        atom.invoke("pointer", b"")
    assert atom.invoke("echo", b"ok") == b"ok"


def test_a_handler_run_at_a_blocking_point_does_not_take_the_calls_reply(
    runtime: Runtime,
) -> None:
    def on_invoke(ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        atom.deliver(7, b"")  # queued: the atom is busy; its handler runs at invoke/yield
        return b"\xc0"

    atom = runtime.create(runtime.load(wat("inbox")), GUID_A, ScriptedHost(on_invoke))
    assert atom.invoke("nested", b"") == b"O"
    assert atom.invoke("h", b"") == b"I"  # the handler ran, inside the call


def test_a_reentrant_call_inside_a_call_keeps_the_outer_inputs_and_reply(
    runtime: Runtime,
) -> None:
    inner: list[bytes] = []

    def on_invoke(ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        inner.append(
            atom.invoke("echo", b"inner", chain=ctx.chain, open_chain=ctx.open_chain, timeout=5)
        )
        return b"\xc0"

    atom = runtime.create(
        runtime.load(wat("inbox")), GUID_A, ScriptedHost(on_invoke), reentrant=True
    )
    assert atom.invoke("nested", b"") == b"O"
    assert atom.invoke("reentry", b"outer args") == b"outer args"
    assert inner == [b"inner", b"inner"]


def test_a_restored_atom_starts_with_an_empty_slot(runtime: Runtime) -> None:
    snapshots: list[bytes] = []

    def on_invoke(ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        snapshots.append(atom.snapshot(timeout=2.0))  # at the call's blocking point
        return b"\xc0"

    atom = runtime.create(
        runtime.load(wat("inbox")), GUID_A, ScriptedHost(on_invoke), reentrant=True
    )
    atom.invoke("nested", b"")
    restored = runtime.restore(atom.module, GUID_A, StandaloneHost(), snapshots[0])
    assert restored.invoke("z", b"") == b"\xc0"


@pytest.mark.parametrize("ptr", ["0", "65530", "-8"])
def test_an_inbox_outside_the_memory_is_a_bad_module(runtime: Runtime, ptr: str) -> None:
    text = (WAT_DIR / "inbox.wat").read_text()
    bad = text.replace(
        '(func (export "hx_inbox") (result i32) (i32.const 1024))',
        f'(func (export "hx_inbox") (result i32) (i32.const {ptr}))',
    )
    with pytest.raises(BadModuleError, match="hx_inbox returned a bad buffer"):
        runtime.create(runtime.load(wasmtime.wat2wasm(bad)), GUID_A, StandaloneHost())


def test_c_atoms_use_the_inbox_and_reply_through_it(runtime: Runtime) -> None:
    counter = runtime.create(runtime.load(example("counter")), GUID_A, StandaloneHost())
    assert counter._inst._inbox_cap == 1024
    assert [codec.unpack(counter.invoke("incr", codec.pack(2))) for _ in range(3)] == [2, 4, 6]
    big = runtime.create(runtime.load(example("echo")), "local:" + "c" * 32, StandaloneHost())
    # Over the SDK's 1 KiB reply buffer: the reply goes through hx.reply.
    payload = codec.pack(b"x" * 1500)
    assert big.invoke("echo", payload) == payload
