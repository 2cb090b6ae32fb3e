"""Benchmark of the atom runtime (``hermesx bench runtime``; docs/DESIGN.md §3, §8).

Measures, in one process and one run (this VM varies ±30% between runs, so
compare figures of the same run):

* ``counter.incr`` end to end through :meth:`Atom.invoke` without a request
  id, msgpack packing of the argument and unpacking of the result included:
  p50, p99, calls/s (``call_*``). Each sample is one call timed alone with
  ``perf_counter_ns``; the timing itself is ``timer_overhead_us``;
* the same call with a request id of its own (``call_request_id_p50_us``; the
  ids are made before the timing, as a client makes them), so also through
  the reply table's lookup and record (``reply_table_us``, the difference);
* where that time goes: one bare Python->wasm crossing, one ``hx_alloc``
  crossing, msgpack, and what remains (runtime bookkeeping: the turn, the
  activation's frame and deadlines, copying the inputs in and the reply out).
  The C atoms have an inbox (atoms/ABI.md), so a call crosses into wasm once;
  ``inbox`` says whether the atom measured has one (without it a call also
  crosses for ``hx_alloc`` and for the ``hx.reply`` import back into Python);
  ``c_crossing`` whether that one crossing went through the runtime's C
  crossing (hermesx/runtime/native.py; else through ctypes, as the bare
  crossings measured here always do). ``instance_invoke_us`` is
  ``WasmInstance.invoke`` alone: the inputs in, the crossing, the reply out;
  with the C crossing the bookkeeping is the call less that;
  docs/PERFORMANCE.md breaks the call down further;
* snapshot and restore of an atom holding 1 MiB of non-zero state, restore
  going into a second runtime with its own engine, as a move does;
* wasm code writing 1 MiB of memory (``fill``), where the bounds checks that
  an atom's memory reservation sized to its cap implies would show.

The example C atoms (``atoms/build``) are used when built; otherwise small
built-in WAT atoms with the same methods.
"""

from __future__ import annotations

import gc
import pathlib
import statistics
import time
from collections.abc import Callable

import msgpack
import wasmtime

from hermesx.core.replies import RequestIds
from hermesx.runtime.atom import Atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost

__all__ = ["run"]

_BUILD_DIR = pathlib.Path(__file__).resolve().parents[2] / "atoms" / "build"
_GUID = "bench:" + "0" * 32

# Fallback atom: incr (fixint argument), get, fill (1 MiB of pattern), check.
_BENCH_WAT = """
(module
  (import "hx" "reply" (func $reply (param i32 i32)))
  (memory (export "memory") 1)
  (global $n (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 1024))
  (func (export "hx_abi_version") (result i32) (i32.const 1))
  (func (export "hx_alloc") (param $len i32) (result i32) (local $p i32)
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $len)) (i32.const 65536))
      (then (global.set $heap (i32.const 1024))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.get $p))
  (func (export "hx_invoke") (param $m i32) (param $ml i32) (param $a i32) (param $al i32)
                             (result i32) (local $i i32) (local $base i32)
    (if (i32.eq (i32.load8_u (local.get $m)) (i32.const 0x69)) ;; incr
      (then
        (global.set $n (i32.add (global.get $n) (i32.load8_u (local.get $a))))
        (i32.store8 (i32.const 0) (i32.const 0xce))
        (i32.store8 (i32.const 1) (i32.shr_u (global.get $n) (i32.const 24)))
        (i32.store8 (i32.const 2) (i32.shr_u (global.get $n) (i32.const 16)))
        (i32.store8 (i32.const 3) (i32.shr_u (global.get $n) (i32.const 8)))
        (i32.store8 (i32.const 4) (global.get $n))
        (call $reply (i32.const 0) (i32.const 5))
        (return (i32.const 0))))
    (if (i32.eq (i32.load8_u (local.get $m)) (i32.const 0x66)) ;; fill
      (then
        (local.set $base (i32.mul (memory.grow (i32.const 16)) (i32.const 65536)))
        (block $done (loop $l
          (br_if $done (i32.ge_u (local.get $i) (i32.const 1048576)))
          (i32.store (i32.add (local.get $base) (local.get $i))
                     (i32.mul (i32.add (local.get $i) (i32.const 1)) (i32.const -1640531535)))
          (local.set $i (i32.add (local.get $i) (i32.const 4)))
          (br $l)))
        (return (i32.const 0))))
    (i32.const 1)))
"""


def _module(name: str) -> tuple[bytes, bool]:
    path = _BUILD_DIR / f"{name}.wasm"
    if path.exists():
        return path.read_bytes(), True
    return bytes(wasmtime.wat2wasm(_BENCH_WAT)), False


def _timed(fn: Callable[[], object], n: int) -> list[float]:
    """Per-call durations in µs."""
    samples = [0.0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        start = clock()
        fn()
        samples[i] = (clock() - start) / 1000
    return samples


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _loop_us(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def _bench_calls(atom: Atom, iterations: int) -> dict[str, float]:
    packb, unpackb = msgpack.packb, msgpack.unpackb
    invoke = atom.invoke

    def incr() -> object:
        return unpackb(invoke("incr", packb(1)))

    warm_up = min(2000, iterations)
    for _ in range(warm_up):
        incr()
    samples = _timed(incr, iterations)
    # Every call of a client carries a new request id (docs/DESIGN.md §4).
    ids = RequestIds()
    fresh = iter([ids.next() for _ in range(warm_up + iterations)])

    def incr_with_id() -> object:
        return unpackb(invoke("incr", packb(1), request_id=next(fresh)))

    for _ in range(warm_up):
        incr_with_id()
    with_id = _timed(incr_with_id, iterations)
    timer = _timed(lambda: None, iterations)
    inst = atom._inst
    one = packb(1)
    n = max(1000, iterations // 4)
    inst.set_deadline(atom._budget_ticks)  # the bare crossings below run outside a call
    crossing = _loop_us(lambda: inst.call("hx_abi_version", (), True), n)
    alloc = _loop_us(lambda: inst.alloc(8), n)
    msgpack_us = _loop_us(lambda: unpackb(packb(1)), n)
    raw_invoke = _loop_us(lambda: invoke("incr", one), n)
    ticks = atom._budget_ticks
    instance_invoke = _loop_us(lambda: inst.invoke(b"incr", one, True, ticks), n)
    inbox = inst.has("hx_inbox")
    c_crossing = inst._crossing is not None
    # hx_invoke, and without an inbox hx_alloc and the hx.reply import too; with the
    # C crossing, that one C call, the copy in and the reply out included.
    wasm_part = crossing if inbox else alloc + crossing * 2
    if c_crossing:
        wasm_part = instance_invoke
    return {
        "call_p50_us": statistics.median(samples),
        "call_p99_us": _percentile(samples, 0.99),
        "call_mean_us": statistics.fmean(samples),
        "calls_per_s": 1e6 / statistics.fmean(samples),
        "call_request_id_p50_us": statistics.median(with_id),
        "reply_table_us": max(0.0, statistics.median(with_id) - statistics.median(samples)),
        "timer_overhead_us": statistics.median(timer),
        "wasm_crossing_us": crossing,
        "alloc_crossing_us": alloc,
        "msgpack_us": msgpack_us,
        "invoke_without_msgpack_us": raw_invoke,
        "instance_invoke_us": instance_invoke,
        "runtime_bookkeeping_us": max(0.0, raw_invoke - wasm_part),
        "inbox": 1.0 if inbox else 0.0,
        "c_crossing": 1.0 if c_crossing else 0.0,
    }


def _bench_snapshots(rounds: int) -> dict[str, float]:
    wasm, is_c = _module("memhog")
    source, target = Runtime(), Runtime()
    try:
        atom = source.create(source.load(wasm), _GUID, StandaloneHost())
        fill_ms: list[float] = []
        for _ in range(rounds):
            # Wasm code that writes memory: what bounds checks would slow down.
            start = time.perf_counter()
            atom.invoke("fill", msgpack.packb(1024))
            fill_ms.append((time.perf_counter() - start) * 1000)
        module = target.load(wasm)
        snapshot_ms: list[float] = []
        restore_ms: list[float] = []
        size = 0
        for _ in range(rounds):
            start = time.perf_counter()
            snap = atom.snapshot()
            mid = time.perf_counter()
            restored = target.restore(module, _GUID, StandaloneHost(), snap)
            end = time.perf_counter()
            if is_c:
                # The moved state is intact, not just fast to move.
                assert msgpack.unpackb(restored.invoke("check", b"")) == 1024
            restored.close()
            snapshot_ms.append((mid - start) * 1000)
            restore_ms.append((end - mid) * 1000)
            size = len(snap)
        return {
            "snapshot_1mib_ms": statistics.median(snapshot_ms),
            "restore_1mib_ms": statistics.median(restore_ms),
            "snapshot_1mib_bytes": float(size),
            "fill_1mib_ms": statistics.median(fill_ms),
        }
    finally:
        source.close()
        target.close()


def run(iterations: int = 20000) -> dict[str, float]:
    """Run the runtime benchmark; flat figures whose names carry their units."""
    wasm, is_c = _module("counter")
    runtime = Runtime()
    gc_was_enabled = gc.isenabled()
    try:
        started = time.perf_counter()
        module = runtime.load(wasm)
        load_ms = (time.perf_counter() - started) * 1000
        atom = runtime.create(module, _GUID, StandaloneHost())
        gc.disable()  # collector pauses would only add noise to the percentiles
        figures = _bench_calls(atom, iterations)
    finally:
        if gc_was_enabled:
            gc.enable()
        runtime.close()
    figures["load_counter_ms"] = load_ms
    figures["c_atoms"] = 1.0 if is_c else 0.0
    figures.update(_bench_snapshots(rounds=max(5, min(50, iterations // 400))))
    return figures


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:30} {value:12.2f}")
