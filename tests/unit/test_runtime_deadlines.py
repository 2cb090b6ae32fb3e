"""Deadlines are absolute: every wait inside an atom ends at its call's deadline (issue 11).

Also: a reentrant atom can be snapshotted while its call waits on a callback,
and callers queued behind each other's atoms from separate chains fail fast.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from wat.runtime_helpers import GUID_A, GUID_B, ScriptedHost, example, wat

from hermesx.core import codec
from hermesx.core.errors import (
    CallCycleError,
    CapacityError,
    DeadlineExceededError,
    HermesError,
    MethodError,
)
from hermesx.runtime.atom import Atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import CallContext, StandaloneHost
from hermesx.runtime.mailbox import MAX_MAIL_BYTES
from hermesx.testing.wait import wait_until


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(deadline_ms=300, default_timeout_s=5.0)
    yield rt
    rt.close()


def wedge(runtime: Runtime, guid: str = GUID_A, host: object = None) -> Atom:
    return runtime.create(runtime.load(wat("wedge")), guid, host or StandaloneHost())  # type: ignore[arg-type]


def timed(fn: object, *args: object, **kw: object) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        fn(*args, **kw)  # type: ignore[operator]
    except HermesError as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def test_recv_forever_ends_at_the_calls_deadline_and_the_atom_serves_again(
    runtime: Runtime,
) -> None:
    atom = wedge(runtime)
    sp = atom._read_sp()
    error, took = timed(atom.invoke, "block", codec.pack(None), timeout=0.5)
    assert isinstance(error, DeadlineExceededError)
    assert "block was still waiting in recv(-1) at its call's deadline" in str(error)
    assert 0.45 <= took < 1.5
    # Unfixed, usable, and the abandoned wasm stack was unwound.
    assert not atom.busy
    assert codec.unpack(atom.invoke("ping", codec.pack(None))) == 1
    assert atom._read_sp() == sp


def test_a_call_without_a_timeout_gets_the_runtimes_default_deadline() -> None:
    rt = Runtime(deadline_ms=300, default_timeout_s=0.4)
    try:
        atom = wedge(rt)
        error, took = timed(atom.invoke, "block", codec.pack(None))
        assert isinstance(error, DeadlineExceededError)
        assert took < 1.5
    finally:
        rt.close()


def test_a_yield_loop_ends_at_the_calls_deadline(runtime: Runtime) -> None:
    atom = wedge(runtime)
    error, took = timed(atom.invoke, "spinyield", codec.pack(None), timeout=0.5)
    assert isinstance(error, DeadlineExceededError)
    assert "yield loop" in str(error)
    assert took < 1.5
    assert codec.unpack(atom.invoke("ping", codec.pack(None))) == 1


def test_a_blocked_invoke_ends_at_the_deadline_and_its_late_result_is_dropped(
    runtime: Runtime,
) -> None:
    release = threading.Event()
    returned = threading.Event()

    def slow(ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        release.wait(10)
        returned.set()
        return codec.pack(7)

    atom = runtime.create(runtime.load(wat("testatom")), GUID_A, ScriptedHost(slow))
    error, took = timed(atom.invoke, "call", codec.pack(None), timeout=0.5)
    assert isinstance(error, DeadlineExceededError)
    assert "invoke of other.get" in str(error)
    assert took < 1.5
    release.set()
    assert returned.wait(5)
    wait_until(lambda: not atom._abandoned, 5.0, "the abandoned call to be forgotten")
    assert not atom._sync_results and not atom._abandoned and not atom._outgoing


def test_a_caller_queued_behind_a_wedged_call_ends_at_its_own_deadline(runtime: Runtime) -> None:
    atom = wedge(runtime)
    first = threading.Thread(
        target=timed, args=(atom.invoke, "block", codec.pack(None)), kwargs={"timeout": 3.0}
    )
    first.start()
    wait_until(lambda: atom.busy, 5.0, "the wedged call to start")
    error, took = timed(atom.invoke, "ping", codec.pack(None), timeout=0.4)
    assert error is not None and "waited past its deadline for its turn" in str(error)
    assert took < 1.5
    first.join(10)


def test_the_outer_deadline_bounds_a_callback_run_inside_it(runtime: Runtime) -> None:
    atoms: dict[str, Atom] = {}

    def callback(ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        # The callback blocks for ever in recv; the outer call's deadline ends it.
        return atoms[GUID_A].invoke(
            "block", codec.pack(None), chain=ctx.chain, timeout=30.0, open_chain=ctx.open_chain
        )

    a = runtime.create(runtime.load(wat("wedge")), GUID_A, ScriptedHost(callback), reentrant=True)
    atoms[GUID_A] = a
    relay = runtime.create(runtime.load(wat("wedge")), GUID_B, ScriptedHost(callback))
    # relay -> (host) -> a.block, inside relay's invoke: a is reentrant, not busy; the
    # 30 s the callback asks for is cut to the 0.8 s of the call it serves.
    error, took = timed(relay.invoke, "relay", codec.pack(GUID_A), timeout=0.8)
    assert error is not None
    assert took < 2.0


def test_a_reentrant_atom_is_snapshotted_while_its_call_waits_on_a_callback(
    runtime: Runtime,
) -> None:
    """The every-call checkpoint of a callback used to wait for the atom to go idle,
    while the outer call waited for that callback: a deadlock."""
    snapshots: list[bytes] = []

    def callback(ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        result = atom.invoke("incr", codec.pack(5), chain=ctx.chain, timeout=5.0)
        snapshots.append(atom.snapshot(timeout=2.0))  # the callback's checkpoint
        return result

    atom = runtime.create(
        runtime.load(wat("testatom")), GUID_A, ScriptedHost(callback), reentrant=True
    )
    started = time.monotonic()
    assert codec.unpack(atom.invoke("call", codec.pack(None), timeout=5.0)) == 5
    assert time.monotonic() - started < 2.0
    restored = runtime.restore(atom.module, GUID_A, StandaloneHost(), snapshots[0])
    # The snapshot holds the callback's effect: it is durable before its reply leaves.
    assert codec.unpack(restored.invoke("get", codec.pack(None))) == 5


def _crossing_relays(runtime: Runtime) -> tuple[dict[str, Atom], dict[str, object], float]:
    """Atoms A and B each relay a call to the other at once: a wait cycle across two
    chains. The atoms, each relay's outcome (by its atom) and the seconds it all took."""
    atoms: dict[str, Atom] = {}

    class Local(StandaloneHost):
        def invoke(self, ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
            return atoms[target].invoke(
                method, args, chain=ctx.chain, timeout=ctx.timeout, open_chain=ctx.open_chain
            )

    atoms[GUID_A] = wedge(runtime, GUID_A, Local())
    atoms[GUID_B] = wedge(runtime, GUID_B, Local())
    outcomes: dict[str, object] = {}

    def relay(src: str, dst: str) -> None:
        try:
            outcomes[src] = codec.unpack(atoms[src].invoke("relay", codec.pack(dst), timeout=10.0))
        except HermesError as exc:
            outcomes[src] = exc

    started = time.monotonic()
    threads = [
        threading.Thread(target=relay, args=(GUID_A, GUID_B)),
        threading.Thread(target=relay, args=(GUID_B, GUID_A)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    return atoms, outcomes, time.monotonic() - started


def test_two_chains_waiting_on_each_others_atoms_fail_fast(runtime: Runtime) -> None:
    _, outcomes, took = _crossing_relays(runtime)
    failed = [o for o in outcomes.values() if isinstance(o, HermesError)]
    # One chain is told about the cycle at once; the other then completes.
    assert len(failed) == 1, outcomes
    assert isinstance(failed[0], MethodError)
    assert "call_cycle: wait cycle" in str(failed[0])
    assert [o for o in outcomes.values() if not isinstance(o, HermesError)] == [1]
    assert took < 3.0


def test_a_new_wait_cycle_between_the_same_atoms_is_found_at_once(runtime: Runtime) -> None:
    """Breaking a wait cycle notes that the failed chain's call is being failed (so the
    other chain, looking at the same moment, waits on instead of failing too). Once that
    call has come back, the note must not hide a new cycle between the same two atoms."""
    atoms, outcomes, _ = _crossing_relays(runtime)
    [failed] = [src for src, outcome in outcomes.items() if isinstance(outcome, HermesError)]
    other = GUID_B if failed == GUID_A else GUID_A
    # The failed chain's atom busy again with a call waiting on the other atom, and a
    # call from the other atom queued behind it: a new cycle, found on arrival.
    caller = atoms[failed]
    caller._outgoing[99] = other
    try:
        with pytest.raises(CallCycleError, match="wait cycle"):
            caller._check_wait_cycle(frozenset({other}), (other,), "ping")
    finally:
        caller._outgoing.clear()


def test_a_reentrant_atom_on_the_chain_is_not_a_wait_cycle(runtime: Runtime) -> None:
    atom = wedge(runtime)
    # The chain's atom takes calls while blocked: no cycle, the call just waits its turn.
    atom._outgoing[99] = GUID_B
    try:
        atom._check_wait_cycle(frozenset(), (GUID_B,), "ping")
        with pytest.raises(CallCycleError, match="wait cycle"):
            atom._check_wait_cycle(frozenset({GUID_B}), (GUID_B,), "ping")
    finally:
        atom._outgoing.clear()


def test_one_atoms_outgoing_calls_to_a_slow_target_leave_threads_for_the_others(
    runtime: Runtime,
) -> None:
    release = threading.Event()
    lock = threading.Lock()
    running = {"now": 0, "most": 0}

    def host_invoke(ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        if ctx.caller_guid == GUID_B:
            return codec.pack(42)
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        release.wait(10)
        with lock:
            running["now"] -= 1
        return codec.pack(1)

    host = ScriptedHost(host_invoke)
    fan = runtime.create(runtime.load(wat("testatom")), GUID_A, host)
    other = runtime.create(runtime.load(wat("testatom")), GUID_B, host)
    try:
        # More invoke_async calls than the node's syscall pool has threads.
        for _ in range(40):
            fan.invoke("async", codec.pack(None), timeout=20.0)
        started = time.monotonic()
        assert codec.unpack(other.invoke("call", codec.pack(None), timeout=5.0)) == 42
        assert time.monotonic() - started < 1.0
        assert running["most"] <= 8
    finally:
        release.set()
    # The queued ones run in turn once the slow target answers.
    wait_until(
        lambda: codec.unpack(fan.invoke("futs", codec.pack(None))) >= 40,
        10.0,
        "the queued outgoing calls to all complete",
    )


def test_idle_delivery_never_waits_for_a_busy_atom() -> None:
    rt = Runtime(deadline_ms=3000)
    try:
        busy = rt.create(rt.load(wat("testatom")), GUID_A, StandaloneHost())
        idle = rt.create(rt.load(wat("testatom")), GUID_B, StandaloneHost())
        spinning = threading.Thread(
            target=timed, args=(busy.invoke, "slowints", codec.pack(10**6)), daemon=True
        )
        spinning.start()
        wait_until(lambda: busy.busy, 5.0, "the spinning call to start")
        busy.deliver(1, b"x")
        # Mail raced with the atom becoming busy: the shared delivery threads look at it.
        busy._schedule_idle()
        busy._idle_scheduled = False
        busy._schedule_idle()
        idle.deliver(1, b"y")
        wait_until(
            lambda: codec.unpack(idle.invoke("ints", codec.pack(None))) >= 1,
            1.0,
            "the idle atom's interrupt (it must not wait for the busy one)",
            every=0.01,
        )
        spinning.join(10)
        # The busy atom gets its interrupt once free.
        wait_until(
            lambda: codec.unpack(busy.invoke("ints", codec.pack(None))) >= 1,
            5.0,
            "the busy atom's interrupt once it is free",
        )
    finally:
        rt.close()


def test_an_asynchronous_call_marks_its_whole_chain_as_not_waiting(runtime: Runtime) -> None:
    seen: list[CallContext] = []

    def record(ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        seen.append(ctx)
        return codec.pack(1)

    atom = runtime.create(runtime.load(wat("testatom")), GUID_A, ScriptedHost(record))
    atom.invoke("call", codec.pack(None), chain=(GUID_B,))
    atom.invoke("async", codec.pack(None), chain=(GUID_B,))
    wait_until(lambda: len(seen) >= 2, 5.0, "both calls to reach the host")
    sync_ctx, async_ctx = seen
    assert sync_ctx.chain == (GUID_B, GUID_A) and sync_ctx.open_chain == ()
    assert set(async_ctx.open_chain) == {GUID_B, GUID_A}


class _SlowSends(StandaloneHost):
    """Every send takes 2 ms and is counted (a send loop outlasting its call)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def send(self, ctx: CallContext, target: str, code: int, payload: bytes) -> None:
        time.sleep(0.002)  # the slowness this host stands for
        self.sent += 1


def _sender(runtime: Runtime, host: _SlowSends) -> Atom:
    return runtime.create(runtime.load(example("caller")), GUID_A, host)


def test_a_send_loop_ends_at_its_calls_deadline() -> None:
    """Time in syscalls is not CPU time: the loop must still end at the call's deadline."""
    rt = Runtime(deadline_ms=300, default_timeout_s=5.0)
    try:
        host = _SlowSends()
        atom = _sender(rt, host)
        error, took = timed(
            atom.invoke, "send_many", codec.pack(["inbox", 7, 1_000_000]), timeout=0.4
        )
        assert isinstance(error, DeadlineExceededError)
        assert "send_many was still running at send at its call's deadline" in str(error)
        assert took < 1.5
        sent = host.sent
        time.sleep(0.1)  # a deliberate window in which a send that goes on would show
        assert host.sent == sent  # nothing goes on sending after the call ended
        assert not atom.busy
    finally:
        rt.close()


def test_a_dropped_atoms_running_call_stops_at_its_next_send(runtime: Runtime) -> None:
    """A node that fences or moves an atom away closes it: its running call must not go
    on acting (sending, calling) beside the copy that now serves elsewhere."""
    host = _SlowSends()
    atom = _sender(runtime, host)
    outcome: list[BaseException | None] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            timed(atom.invoke, "send_many", codec.pack(["inbox", 7, 1_000_000]), timeout=30)[0]
        )
    )
    worker.start()
    wait_until(lambda: host.sent >= 10, 5.0, "the send loop to be sending")
    atom.close()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert outcome and isinstance(outcome[0], HermesError)
    assert "was dropped by node local; its running call send_many ends at send" in str(outcome[0])
    sent = host.sent
    time.sleep(0.1)  # a deliberate window in which a send that goes on would show
    assert host.sent == sent


def test_a_mailbox_is_bounded_and_a_refused_message_says_why(runtime: Runtime) -> None:
    atom = wedge(runtime)
    with pytest.raises(CapacityError, match="mailbox is full"):
        atom.deliver(7, b"x" * (MAX_MAIL_BYTES + 1))
    assert codec.unpack(atom.invoke("ping", codec.pack(None))) == 1


def test_a_call_after_a_pause_gets_a_fresh_cpu_budget() -> None:
    """Calls within one epoch tick share the deadline set for the first of them;
    a call after ticks have passed must get its own, not the stale one."""
    rt = Runtime(deadline_ms=1000, default_timeout_s=10.0)
    try:
        atom = rt.create(rt.load(wat("testatom")), GUID_A, StandaloneHost())
        for _ in range(200):
            atom.invoke("get", codec.pack(None))
        started = time.monotonic()
        atom.invoke("slow", codec.pack(20))
        rounds = max(20, int(20 * 0.1 / max(time.monotonic() - started, 1e-4)))
        time.sleep(1.5)  # longer than the whole budget: a stale deadline has passed
        # About 0.1 s of work, well inside the 1 s budget.
        assert codec.unpack(atom.invoke("slow", codec.pack(rounds))) == 2
        with pytest.raises(DeadlineExceededError):
            atom.invoke("spin", codec.pack(None))
    finally:
        rt.close()


def test_two_calls_finding_their_cycle_at_once_fail_one_chain_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two calls crossing each other, each queued behind an atom whose holder waits on
    the other's caller, may both look for the cycle before either fails: the second to
    look finds the first failed (its holder comes free) and waits on, so one chain
    goes on instead of both failing."""
    from hermesx.runtime import scheduling

    def busy(guid: str, waits_on: str) -> scheduling.AtomScheduling:
        atom = object.__new__(scheduling.AtomScheduling)
        atom.guid = guid
        atom._cv = threading.Condition()
        atom._outgoing = {1: waits_on}
        return atom

    monkeypatch.setattr(scheduling, "_CYCLES_BROKEN", {})
    a, b = busy(GUID_A, GUID_B), busy(GUID_B, GUID_A)
    # A's call to B, queued at B (whose holder waits on A): the cycle, failed.
    with pytest.raises(CallCycleError, match="wait cycle"):
        b._check_wait_cycle(frozenset({GUID_A}), (GUID_A,), "ping")
    # B's call to A, queued at A, looks next: A's holder is the chain just failed.
    a._check_wait_cycle(frozenset({GUID_B}), (GUID_B,), "ping")
    # A cycle still there a moment later is found again.
    monkeypatch.setattr(scheduling, "CYCLE_BROKEN_S", 0.0)
    time.sleep(0.01)
    with pytest.raises(CallCycleError, match="wait cycle"):
        a._check_wait_cycle(frozenset({GUID_B}), (GUID_B,), "ping")
