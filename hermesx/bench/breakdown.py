"""`hermesx bench breakdown`: where one call's time goes, measured with a sampling profiler.

On a private one-node cluster (mutual TLS on, the default) one client
thread calls back to back, first the ``echo`` atom on checkpoint
``on-request`` (a plain call), then ``counter.incr`` on ``every-call`` (a
durable call). Each kind is measured in two windows of the same length:

1. **CPU**: py-spy samples the client (this process), the node and the
   storesite, keeping only the thread that holds the GIL (``--gil``): that
   is Python code running, and it splits into stages by the frames on the
   stack (:func:`stage_of`). Each process's CPU time per call comes from
   ``/proc/PID/stat``; the part the samples do not cover ("unseen") is CPU
   spent without the GIL: gRPC core's C threads and calls (polling, HTTP/2,
   TLS), system calls, and sampling error. The call's mean wall time minus
   the three processes' CPU is time no process of the call was on a CPU:
   loopback wake-ups, scheduling, the disk's sync.
2. **Wall time inside the call**: py-spy samples the node and the storesite
   with idle threads included; stacks inside the node's dispatcher or the
   storesite's code give the wall time per call of each stage (dispatch,
   runtime, wasm, the checkpoint and its parts, the LMDB commit), waits
   included.

py-spy runs in ``--nonblocking`` mode (it does not stop the process to
sample it). The figures are means per call; docs/PERFORMANCE.md "Where a
call's time goes" reads them.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hermesx.core import codec
from hermesx.core.errors import ConfigurationError

if TYPE_CHECKING:
    from hermesx.client import Client

__all__ = ["describe", "frame_paths", "run", "stage_of"]

Progress = Callable[[str], None]

PAYLOAD = codec.pack(bytes(98))  # 100 bytes, as in `bench invoke`
RATE_HZ = 100
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")
_TICK = os.sysconf("SC_CLK_TCK")


def frame_paths(stack: str) -> list[str]:
    """The file of each frame of a py-spy raw stack line, root first."""
    out = []
    for frame in stack.split(";"):
        m = _FRAME.match(frame)
        path = m.group("path") if m else frame
        # py-spy shortens a path to its import name (hermesx/node/dispatch.py): one form for all.
        out.append(path if path.startswith("/") else "/" + path)
    return out


_TRANSPORT = ("/grpc/", "/hermesx/rpc/", "/zmq/", "/asyncio/", "/uvloop/")
_DISPATCH = "/hermesx/node/dispatch.py"


def _taking_state(path: str) -> bool:
    """A frame of taking the atom's state: a whole snapshot or a delta of it."""
    name = path.rsplit("/", 1)[-1]
    return "snapshot" in name or "delta" in name or "/wasmtime/" in path


def _storesite_call(path: str) -> bool:
    """A storesite frame of serving a call: an RPC handler, composing or committing."""
    name = path.rsplit("/", 1)[-1]
    return "/storesite/" in path and any(
        w in name for w in ("server", "commit", "delta", "checkpoint")
    )


def _transport(path: str) -> bool:
    return any(part in path for part in _TRANSPORT)


def stage_of(role: str, paths: list[str]) -> str:
    """The stage of a call a sampled stack (files, root first) of process ``role`` was in.

    ``transport`` is gRPC or the call channel (encode, send, wait, receive,
    decode), whichever carries the call. ``client``: ``hermesx`` (client,
    routing) or ``transport`` (also a channel's own reader thread); ``other``
    for threads that have no part in the call.
    ``node``: ``transport`` outside the dispatcher (receive, decode the
    request, encode and send the reply), ``dispatch``, ``runtime``, ``wasm``,
    ``checkpoint_snapshot`` (taking the state, whole or a delta),
    ``checkpoint_send`` (the checkpoint's way to the
    storesite, its wait included), ``checkpoint_other``, ``other``.
    ``storesite``: ``commit`` (LMDB), ``handler`` (the rest of its RPC
    handlers and of composing and committing checkpoints), ``transport``,
    ``other`` (its background duties).
    """
    if role == "client":
        if any(map(_transport, paths)):  # the calling thread, or a channel's reader thread
            return "transport"
        return "hermesx" if any("/hermesx/bench/" in p for p in paths) else "other"
    if role == "node":
        at = next((i for i, p in enumerate(paths) if _DISPATCH in p), None)
        if at is None:
            return "transport" if any(map(_transport, paths)) else "other"
        call = paths[at:]
        if any("checkpoint" in p.rsplit("/", 1)[-1] for p in call):
            if any(map(_transport, call)):
                return "checkpoint_send"
            if any(map(_taking_state, call)):
                return "checkpoint_snapshot"
            return "checkpoint_other"
        if any("/wasmtime/" in p for p in call):
            return "wasm"
        if any("/hermesx/runtime/" in p for p in call):
            return "runtime"
        return "dispatch"
    if any("lmdb" in p or "/storesite/store.py" in p for p in paths):
        return "commit"
    if any(map(_storesite_call, paths)):
        return "handler"
    return "transport" if any(map(_transport, paths)) else "other"


@dataclass
class _Spy:
    role: str
    pid: int
    out: str
    proc: subprocess.Popen[bytes]


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(os.path.join(os.path.dirname(sys.executable), "py-spy"))
    if not os.path.exists(found):
        raise ConfigurationError(
            "bench breakdown needs py-spy (pip install py-spy): no py-spy on PATH"
        )
    return found


@contextlib.contextmanager
def _profiled(
    targets: dict[str, int], seconds: float, idle: bool, workdir: str
) -> Iterator[dict[str, Counter[str]]]:
    """py-spy on each ``role: pid`` for ``seconds``; yields stage sample counts after the block."""
    spies = []
    for role, pid in targets.items():
        out = os.path.join(workdir, f"{role}-{'idle' if idle else 'cpu'}.txt")
        argv = [_py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds))]
        argv += ["--rate", str(RATE_HZ), "--format", "raw", "--output", out, "--nonblocking"]
        # Holding the GIL is what running Python code takes: those samples are its CPU.
        argv.append("--idle" if idle else "--gil")
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        spies.append(_Spy(role, pid, out, proc))
    counts: dict[str, Counter[str]] = {}
    try:
        yield counts
    except BaseException:
        # Interrupted or failed: stop sampling, report nothing of a half window.
        for spy in spies:
            spy.proc.kill()
            spy.proc.wait()
        raise
    failures: list[str] = []
    for spy in spies:
        try:
            _, err = spy.proc.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy.proc.kill()
            spy.proc.communicate()
            err = b"timed out"
        if spy.proc.returncode != 0 or not os.path.exists(spy.out):
            # Every py-spy is waited for first; then the first failure is the one told.
            failures.append(
                f"py-spy could not sample the {spy.role} (pid {spy.pid}): "
                f"{' '.join(err.decode(errors='replace').split())[-300:]}"
            )
        else:
            counts[spy.role] = _stages(spy.role, spy.out)
    if failures:
        raise ConfigurationError(failures[0])


def _stages(role: str, path: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if stack and n.isdigit():
                counts[stage_of(role, frame_paths(stack))] += int(n)
    return counts


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _window(
    call: Callable[[], object], seconds: float, targets: dict[str, int], idle: bool, workdir: str
) -> tuple[list[float], dict[str, float], dict[str, Counter[str]]]:
    """Call for ``seconds`` under py-spy: latencies (µs), CPU seconds per process, samples."""
    before = {role: _cpu_seconds(pid) for role, pid in targets.items()}
    latencies: list[float] = []
    with _profiled(targets, seconds, idle, workdir) as counts:
        stop = time.monotonic() + seconds
        clock = time.perf_counter_ns
        while time.monotonic() < stop:
            t0 = clock()
            call()
            latencies.append((clock() - t0) / 1000)
    cpu = {role: _cpu_seconds(pid) - before[role] for role, pid in targets.items()}
    return latencies, cpu, counts


def _breakdown(
    kind: str, call: Callable[[], object], seconds: float, targets: dict[str, int], workdir: str
) -> dict[str, float]:
    out: dict[str, float] = {}
    lat, cpu, counts = _window(call, seconds, targets, False, workdir)
    calls = len(lat)
    out[f"{kind}_calls"] = float(calls)
    out[f"{kind}_wall_p50_us"] = statistics.median(lat)
    out[f"{kind}_wall_mean_us"] = statistics.fmean(lat)
    spent = 0.0
    for role in targets:
        per_call = cpu[role] / calls * 1e6
        spent += per_call
        out[f"{kind}_{role}_cpu_us"] = per_call
        seen = 0.0
        for stage, n in sorted(counts[role].items()):
            us = n / RATE_HZ / calls * 1e6
            seen += us
            out[f"{kind}_{role}_{stage}_us"] = us
        out[f"{kind}_{role}_unseen_us"] = per_call - seen
    out[f"{kind}_waiting_us"] = out[f"{kind}_wall_mean_us"] - spent
    walled = {role: targets[role] for role in ("node", "storesite")}
    lat, _cpu, counts = _window(call, seconds, walled, True, workdir)
    for role in walled:
        for stage, n in sorted(counts[role].items()):
            if stage not in ("transport", "other"):  # idle threads of the pools, not this call
                out[f"{kind}_{role}_wall_{stage}_us"] = n / RATE_HZ / len(lat) * 1e6
    return out


def run(progress: Progress | None = None, seconds: float = 5.0) -> dict[str, float]:
    """Per-call time by stage for a plain and a durable call, flat figures in µs per call."""
    from hermesx.client import Client
    from hermesx.local.cluster import NodeSpec, private_cluster
    from hermesx.runtime.build import build_examples

    if not 0 < seconds <= 3600:
        raise ConfigurationError(f"--seconds must be above 0 and at most 3600, not {seconds}")
    _py_spy()
    seconds = math.ceil(seconds)  # py-spy samples for whole seconds
    say = progress or (lambda _m: None)
    modules = {p.stem: p.read_bytes() for p in build_examples(quiet=True)}
    figures: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="hermesx-spy-") as workdir,
        private_cluster("breakdown", [NodeSpec("n1")], progress=say) as cluster,
        Client(cluster.zk, cluster.name, tls=cluster.tls_dir) as client,
    ):
        targets = {
            "client": os.getpid(),
            "node": cluster.procs["node-n1"],
            "storesite": cluster.procs["storesite-s1"],
        }
        client.create(modules["echo"], name="plain", on="n1", checkpoint="on-request")
        client.create(modules["counter"], name="durable", on="n1", checkpoint="every-call")
        one = codec.pack(1)
        kinds: dict[str, Callable[[], object]] = {
            "plain": lambda: client.invoke("plain", "echo", PAYLOAD),
            "durable": lambda: client.invoke("durable", "incr", one),
        }
        for kind, call in kinds.items():
            _warm(client, call)
            say(f"profiling {kind} calls for 2 x {seconds:g} s")
            figures.update(_breakdown(kind, call, seconds, targets, workdir))
    return figures


def _warm(client: Client, call: Callable[[], object]) -> None:
    stop = time.monotonic() + 0.5
    while time.monotonic() < stop:
        call()


_STAGE_WORDS = {
    "hermesx": "hermesx client and routing",
    "transport": "transport (gRPC / call channel)",
    "dispatch": "dispatch",
    "runtime": "runtime bookkeeping",
    "wasm": "wasm (wasmtime)",
    "checkpoint_snapshot": "checkpoint: snapshot or delta",
    "checkpoint_send": "checkpoint: to the storesite and back",
    "checkpoint_other": "checkpoint: the rest",
    "commit": "LMDB write and commit",
    "handler": "storesite handler",
    "other": "other threads",
    "unseen": "not sampled (C threads, sampling)",
}


def describe(figures: dict[str, float]) -> str:
    """The figures of :func:`run` as an indented account per kind of call, in µs per call."""
    lines: list[str] = []
    for kind in ("plain", "durable"):
        if f"{kind}_wall_mean_us" not in figures:
            continue
        lines.append(
            f"{kind} call: wall mean {figures[f'{kind}_wall_mean_us']:.0f} us, "
            f"p50 {figures[f'{kind}_wall_p50_us']:.0f} us ({figures[f'{kind}_calls']:.0f} calls)"
        )
        for role in ("client", "node", "storesite"):
            lines.append(f"  {role} CPU {figures[f'{kind}_{role}_cpu_us']:8.0f} us")
            prefix = f"{kind}_{role}_"
            for key, value in figures.items():
                stage = key[len(prefix) : -3]
                if key.startswith(prefix) and stage in _STAGE_WORDS and "_wall_" not in key:
                    lines.append(f"    {_STAGE_WORDS[stage]:40} {value:8.0f} us")
        lines.append(f"  waiting, no process on a CPU {figures[f'{kind}_waiting_us']:8.0f} us")
        for role in ("node", "storesite"):
            prefix = f"{kind}_{role}_wall_"
            rows = [(k[len(prefix) : -3], v) for k, v in figures.items() if k.startswith(prefix)]
            if rows:
                lines.append(f"  {role}, wall time inside the call (waits included):")
            for stage, value in rows:
                lines.append(f"    {_STAGE_WORDS.get(stage, stage):40} {value:8.0f} us")
    return "\n".join(lines)
