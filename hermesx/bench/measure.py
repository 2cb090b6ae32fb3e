"""Measuring loads side by side: latency percentiles and calls/s from one run.

Every remote figure of `hermesx bench invoke` comes from a :class:`Load` (a
call and how many client threads make it). :func:`measure_interleaved` runs
the loads in turn, in short slices, several rounds over: on a machine whose
load comes and goes, every path then sees the same spread of conditions, so
their ratios (the benchmark's goals) compare like with like.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Load", "measure_interleaved", "percentile"]

Progress = Callable[[str], None]


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Load:
    """``threads`` callers making ``call(thread index)`` back to back; figures named ``name_*``."""

    name: str
    call: Callable[[int], object]
    threads: int = 1
    latencies_us: list[float] = field(default_factory=list)
    calls: int = 0
    seconds: float = 0.0

    def run_for(self, seconds: float, keep: bool = True) -> None:
        """Run the load for ``seconds``; ``keep`` adds what it measured to its figures."""
        per_thread: list[list[float]] = [[] for _ in range(self.threads)]
        errors: list[BaseException] = []
        stop = time.monotonic() + seconds
        halt = threading.Event()
        call = self.call

        def worker(i: int) -> None:
            own = per_thread[i]
            clock = time.perf_counter_ns
            try:
                while time.monotonic() < stop and not halt.is_set():
                    t0 = clock()
                    call(i)
                    own.append((clock() - t0) / 1000)
            except BaseException as exc:  # reported by the thread that started us
                errors.append(exc)

        started = time.perf_counter()
        # Daemons: an interrupted benchmark exits even while a call of theirs still waits.
        workers = [
            threading.Thread(target=worker, args=(i,), daemon=True) for i in range(self.threads)
        ]
        for w in workers:
            w.start()
        try:
            for w in workers:
                w.join()
        except BaseException:
            halt.set()  # interrupted: no new call, and the clean-up goes on without waiting
            raise
        elapsed = time.perf_counter() - started
        if errors:
            raise errors[0]
        if keep:
            for own in per_thread:
                self.latencies_us.extend(own)
                self.calls += len(own)
            self.seconds += elapsed

    def figures(self) -> dict[str, float]:
        if not self.latencies_us:
            raise RuntimeError(f"load {self.name} made no call")
        return {
            f"{self.name}_p50_us": statistics.median(self.latencies_us),
            f"{self.name}_p99_us": percentile(self.latencies_us, 0.99),
            f"{self.name}_calls_per_s": self.calls / self.seconds,
        }


def measure_interleaved(
    loads: Sequence[Load],
    seconds: float,
    *,
    slices: int = 10,
    warmup: float = 0.3,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Each load for ``seconds`` in all, in ``slices`` turns taken in rotation."""
    say = progress or (lambda _m: None)
    for load in loads:
        load.run_for(warmup, keep=False)
    for turn in range(slices):
        if turn % 5 == 0 or turn == slices - 1:
            say(f"measuring {len(loads)} loads, round {turn + 1}/{slices}")
        # Forth, then back: no load always follows the same neighbour.
        for load in loads if turn % 2 == 0 else list(reversed(loads)):
            load.run_for(seconds / slices)
    figures: dict[str, float] = {}
    for load in loads:
        figures.update(load.figures())
    return figures
