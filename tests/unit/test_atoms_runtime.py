"""The example atoms, run in-process by hermesx.runtime.atom: what atom authors and users see."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import msgpack
import pytest

from hermesx.core.errors import (
    AtomTrapError,
    BadModuleError,
    DeadlineExceededError,
    MemoryLimitError,
    MethodError,
    UnreachableError,
)
from hermesx.core.identity import GUID
from hermesx.runtime.atom import Atom
from hermesx.runtime.build import SDK_DIR, build_atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import CallContext, StandaloneHost
from hermesx.testing.wait import wait_until

pack = msgpack.packb
unpack = msgpack.unpackb

MEMORY_CAP = 4 * 2**20


class LocalHost(StandaloneHost):
    """A host whose 'cluster' is the atoms of one runtime, addressed by name."""

    def __init__(self, node_name: str, atoms: dict[str, Atom]) -> None:
        super().__init__(node_name)
        self.atoms = atoms

    def _atom(self, target: str) -> Atom:
        for name, atom in self.atoms.items():
            if target in (name, atom.guid):
                return atom
        raise UnreachableError(f"atom {target!r}: not in this test")

    def invoke(self, ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        return self._atom(target).invoke(method, args, chain=ctx.chain)

    def send(self, ctx: CallContext, target: str, code: int, payload: bytes) -> None:
        self._atom(target).deliver(code, payload)

    def lookup(self, ctx: CallContext, mode: str, pattern: str, scope: str | None) -> list[str]:
        found = [a.guid for n, a in sorted(self.atoms.items()) if re.fullmatch(pattern, n)]
        return found[:1] if mode == "any" else found


@pytest.fixture(scope="module")
def wasm(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], bytes]:
    out = tmp_path_factory.mktemp("atoms")
    cache: dict[str, bytes] = {}

    def get(name: str) -> bytes:
        if name not in cache:
            cache[name] = build_atom(SDK_DIR / f"{name}.c", out / f"{name}.wasm").read_bytes()
        return cache[name]

    return get


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(deadline_ms=300, memory_limit_bytes=MEMORY_CAP)
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def atoms() -> dict[str, Atom]:
    return {}


@pytest.fixture
def host(atoms: dict[str, Atom]) -> LocalHost:
    return LocalHost("node-a", atoms)


@pytest.fixture
def make(
    runtime: Runtime, wasm: Callable[[str], bytes], host: LocalHost, atoms: dict[str, Atom]
) -> Callable[..., Atom]:
    def create(module: str, name: str | None = None, init: bytes = b"") -> Atom:
        atom = runtime.create(runtime.load(wasm(module)), str(GUID.new("local")), host, init)
        atoms[name or module] = atom
        return atom

    return create


def call(atom: Atom, method: str, *args: object) -> object:
    return unpack(atom.invoke(method, pack(args[0]) if args else b""))


# -- counter ---------------------------------------------------------------


def test_counter_counts_from_its_start_value(make: Callable[..., Atom]) -> None:
    counter = make("counter", init=pack(10))
    assert call(counter, "incr") == 11
    assert call(counter, "incr", 5) == 16
    assert call(counter, "incr", [-20]) == -4
    assert call(counter, "incr", None) == -3
    assert call(counter, "get") == -3


def test_counter_without_init_args_starts_at_zero(make: Callable[..., Atom]) -> None:
    assert call(make("counter"), "get") == 0


def test_counter_state_survives_snapshot_and_restore(
    make: Callable[..., Atom], runtime: Runtime, host: LocalHost
) -> None:
    counter = make("counter")
    call(counter, "incr", 41)
    copy = runtime.restore(counter.module, counter.guid, host, counter.snapshot())
    assert call(copy, "incr") == 42


@pytest.mark.parametrize(
    "bad",
    [pack("five"), pack(1.5), b"\xcd\x01", b"\xc1", pack([1, 2]), pack(2**63), b"\xdc\xff\xff"],
)
def test_counter_rejects_bad_arguments_without_trapping(
    make: Callable[..., Atom], bad: bytes
) -> None:
    counter = make("counter", init=pack(3))
    with pytest.raises(MethodError, match="incr: expected an int"):
        counter.invoke("incr", bad)
    assert call(counter, "get") == 3


def test_counter_refuses_overflow(make: Callable[..., Atom]) -> None:
    counter = make("counter", init=pack(2**63 - 1))
    with pytest.raises(MethodError, match="overflow"):
        counter.invoke("incr", b"")
    assert call(counter, "get") == 2**63 - 1


def test_bad_init_args_fail_create(make: Callable[..., Atom]) -> None:
    with pytest.raises(MethodError, match="start value"):
        make("counter", init=pack("zero"))


def test_unknown_method_is_named(make: Callable[..., Atom]) -> None:
    with pytest.raises(MethodError, match="unknown method: decr"):
        make("counter").invoke("decr", b"")


# -- kvstore ---------------------------------------------------------------


def test_kvstore_keeps_arbitrary_msgpack_values(make: Callable[..., Atom]) -> None:
    kv = make("kvstore")
    value = {"n": [1, -2, 3.5, None, True], "b": b"\x00\xff", "s": "é" * 40}
    assert call(kv, "put", ["doc", value]) is None
    assert call(kv, "put", ["other", 7]) is None
    assert unpack(kv.invoke("get", pack("doc")), raw=False) == value
    assert call(kv, "get", ["other"]) == 7
    assert call(kv, "get", "missing") is None
    assert call(kv, "keys") == ["doc", "other"]
    assert call(kv, "delete", "doc") is True
    assert call(kv, "delete", "doc") is False
    assert call(kv, "keys") == ["other"]
    assert kv.kv == {b"other": pack(7)}


def test_kvstore_state_moves_with_a_snapshot(
    make: Callable[..., Atom], runtime: Runtime, host: LocalHost
) -> None:
    kv = make("kvstore")
    call(kv, "put", ["k", [1, 2, 3]])
    copy = runtime.restore(kv.module, kv.guid, host, kv.snapshot())
    assert call(copy, "get", "k") == [1, 2, 3]


@pytest.mark.parametrize("bad", [pack("k"), pack(["k"]), pack([1, 2]), b"\x92\xa1k", b""])
def test_kvstore_put_rejects_malformed_arguments(make: Callable[..., Atom], bad: bytes) -> None:
    kv = make("kvstore")
    with pytest.raises(MethodError, match="put:"):
        kv.invoke("put", bad)
    assert call(kv, "keys") == []


# -- echo ------------------------------------------------------------------


def test_echo_returns_its_argument_bytes(make: Callable[..., Atom]) -> None:
    echo = make("echo")
    payload = pack({"list": list(range(100)), "bin": bytes(300)})
    assert echo.invoke("echo", payload) == payload
    assert call(echo, "echo") is None


def test_echo_info_names_the_atom_and_node(make: Callable[..., Atom]) -> None:
    echo = make("echo")
    assert call(echo, "info") == {"guid": echo.guid, "node": "node-a"}


def test_echo_log_goes_to_the_node_log(
    make: Callable[..., Atom], caplog: pytest.LogCaptureFixture
) -> None:
    echo = make("echo")
    with caplog.at_level("INFO"):
        assert call(echo, "log", "hello from the atom") is None
    assert "hello from the atom" in caplog.text


def test_large_arguments_do_not_exhaust_the_arena(make: Callable[..., Atom]) -> None:
    # Each call's inputs are released when it returns: 200 calls of 64 KiB
    # would otherwise need over 12 MiB, three times the memory cap.
    echo = make("echo")
    payload = pack(bytes(64 * 1024))
    for _ in range(200):
        assert echo.invoke("echo", payload) == payload


# -- misbehaving atoms -----------------------------------------------------


def test_trap_fails_the_call_and_the_atom_stays_usable(make: Callable[..., Atom]) -> None:
    atom = make("trap")
    for _ in range(3):
        with pytest.raises(AtomTrapError, match="boom"):
            atom.invoke("boom", b"")
        assert call(atom, "ok") == 1


def test_many_traps_do_not_use_up_the_stack(make: Callable[..., Atom]) -> None:
    atom = make("trap")
    for _ in range(4200):  # a leaked 16-byte frame per trap fills 64 KiB in 4096
        with pytest.raises(AtomTrapError):
            atom.invoke("boom", b"")
    assert call(atom, "ok") == 1


def test_spin_hits_the_deadline_and_the_atom_stays_usable(make: Callable[..., Atom]) -> None:
    atom = make("spin")
    with pytest.raises(DeadlineExceededError, match="spin"):
        atom.invoke("spin", b"")
    assert call(atom, "ok") == 1


def test_memhog_grow_reports_out_of_memory_at_the_cap(make: Callable[..., Atom]) -> None:
    atom = make("memhog")
    with pytest.raises(MethodError, match="out of memory"):
        atom.invoke("grow", pack(MEMORY_CAP // 65536 + 1))
    assert call(atom, "pages") == MEMORY_CAP // 65536


def test_memhog_grow_trap_is_a_memory_limit_error(make: Callable[..., Atom]) -> None:
    atom = make("memhog")
    with pytest.raises(MemoryLimitError):
        atom.invoke("grow_trap", pack(MEMORY_CAP // 65536 + 1))
    assert call(atom, "pages") == MEMORY_CAP // 65536


def test_memhog_fill_makes_state_that_survives_a_snapshot(
    make: Callable[..., Atom], runtime: Runtime, host: LocalHost
) -> None:
    atom = make("memhog")
    assert call(atom, "fill", 1024) == 1024
    snapshot = atom.snapshot()
    assert len(snapshot) > 1024 * 1024
    copy = runtime.restore(atom.module, atom.guid, host, snapshot)
    assert call(copy, "check") == 1024
    with pytest.raises(MethodError, match="out of memory"):
        copy.invoke("fill", pack(MEMORY_CAP // 1024))
    assert call(copy, "check") == 1024


def test_module_without_hx_invoke_is_refused(
    runtime: Runtime, wasm: Callable[[str], bytes]
) -> None:
    with pytest.raises(BadModuleError, match="hx_invoke"):
        runtime.load(wasm("noexport"))


# -- interrupts, futures, daemons, atom-to-atom calls ----------------------


def test_inbox_keeps_messages_in_arrival_order(make: Callable[..., Atom]) -> None:
    inbox = make("inbox")
    for i in range(600):  # past the first 256-entry list, so it grows twice
        inbox.deliver(i % 3, pack(i))
    inbox.deliver(1, pack("not an int"))
    wait_until(lambda: call(inbox, "count") == 601, 10.0, 'call(inbox, "count") == 601')
    assert call(inbox, "received") == list(range(600))
    assert call(inbox, "bad") == 1


def test_caller_calls_and_sends_through_the_host(make: Callable[..., Atom]) -> None:
    make("counter", "counter")
    inbox = make("inbox", "inbox")
    caller = make("caller")
    assert call(caller, "call", ["counter", "incr", 5]) == 5
    assert call(caller, "call", ["counter", "get"]) == 5
    assert call(caller, "call_async", ["counter", "incr", 2]) == 7
    assert call(caller, "send_many", ["inbox", 9, 50]) == 50
    wait_until(lambda: call(inbox, "count") == 50, 10.0, 'call(inbox, "count") == 50')
    assert call(inbox, "received") == list(range(50))


def test_caller_passes_the_callees_error_on(make: Callable[..., Atom]) -> None:
    make("counter")
    caller = make("caller")
    with pytest.raises(MethodError, match="unknown method: nope"):
        caller.invoke("call", pack(["counter", "nope", None]))
    with pytest.raises(MethodError, match="unknown method: nope"):
        caller.invoke("call_async", pack(["counter", "nope", None]))
    with pytest.raises(MethodError, match="not in this test"):
        caller.invoke("call", pack(["ghost", "get"]))


def test_many_async_calls_do_not_exhaust_the_arena(make: Callable[..., Atom]) -> None:
    # Future results arrive in nested entries whose memory must be released.
    make("echo")
    caller = make("caller")
    blob = bytes(32 * 1024)
    for _ in range(150):
        assert call(caller, "call_async", ["echo", "echo", blob]) == blob


def test_caller_lookup_modes(make: Callable[..., Atom]) -> None:
    first = make("counter", "c1")
    second = make("counter", "c2")
    caller = make("caller")
    assert call(caller, "lookup", ["all", None, "c[0-9]"]) == [first.guid, second.guid]
    assert call(caller, "lookup", [1, None, "c[0-9]"]) == [first.guid]
    with pytest.raises(MethodError, match="mode"):
        caller.invoke("lookup", pack(["some", None, "c.*"]))


def test_daemon_counts_interrupts_from_its_main_loop(make: Callable[..., Atom]) -> None:
    daemon = make("daemon")
    for _ in range(40):
        daemon.deliver(3, bytes(16 * 1024))
    wait_until(lambda: call(daemon, "count") == 40, 10.0, 'call(daemon, "count") == 40')
    assert 1 <= int(call(daemon, "loops")) <= 40  # type: ignore[call-overload]
    for _ in range(300):  # 4.8 MiB of payloads: more than the cap if they leaked
        daemon.deliver(4, bytes(16 * 1024))
    wait_until(lambda: call(daemon, "count") == 340, 10.0, 'call(daemon, "count") == 340')


def test_mover_asks_to_move_and_keeps_state(
    make: Callable[..., Atom], host: LocalHost, runtime: Runtime
) -> None:
    mover = make("mover")
    assert call(mover, "bump") == 1
    assert call(mover, "where") == "node-a"
    assert call(mover, "go", "node-b") == "node-a"
    assert host.move_requests == ["node-b"]
    moved = runtime.restore(mover.module, mover.guid, LocalHost("node-b", {}), mover.snapshot())
    assert call(moved, "where") == "node-b"
    assert call(moved, "bump") == 2
