"""`hermesx bench invoke --json` reports every figure and goal of a call's speed (issue 13).

The benchmark is run as a user runs it, with a tiny measuring time: it starts
its own clusters (with and without TLS), a TCP floor and a gRPC echo, and
must print each figure as a number and each goal with a verdict, then leave
no process behind. How fast anything is stays the benchmark's business: no
figure is compared with a limit here.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
from typing import Any

import pytest

from hermesx.testing.processes import kill_processes_with_home, processes_with_home
from hermesx.testing.reaper import tethered

pytestmark = pytest.mark.integration

FIGURES = [
    "runtime_call_p50_us",
    "disk_sync_4k_p50_us",
    "forwarding_hop_us",
    "forwarding_hop_warm_us",
    "hop_warm_over_plain_ratio",
    "hop_cold_over_plain_ratio",
    "hop_c1_p50_us",
    "hop_direct_c1_p50_us",
    *(f"first_call_{k}_hops_p50_us" for k in range(4)),
    *(f"first_call_{k}_hops_over_direct_ratio" for k in (1, 2, 3)),
    *(f"remote_over_grpc_{c}_{r}_ratio" for c in ("c1", "c8") for r in ("p50", "rate")),
    *(
        f"{path}_{clients}_{what}"
        for path in ("tcp_floor", "grpc_echo", "invoke", "invoke_insecure", "durable")
        for clients in ("c1", "c8")
        for what in ("p50_us", "p99_us", "calls_per_s")
    ),
]
GOALS = [
    "plain_p50_over_floor",
    "plain_c8_rate_over_floor",
    "tls_cost",
    "durable_p50_over_budget",
    "durable_c8_rate_over_plain",
    "hop_over_plain",
    "runtime_call",
]


def _run_bench(
    tmp_path: pathlib.Path, argv: list[str], timeout: float
) -> tuple[dict[str, Any], list[str]]:
    """``hermesx bench ARGV`` as a user runs it: its figures, and the processes it left."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMESX_")}
    # The benchmark's private cluster homes land here, where leftovers can be found.
    env["TMPDIR"] = str(tmp_path)
    bin_dir = os.path.dirname(sys.executable)  # py-spy sits beside the interpreter
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    proc = tethered(
        [sys.executable, "-m", "hermesx", "bench", *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        left = processes_with_home(tmp_path)
        kill_processes_with_home(tmp_path)
    assert proc.returncode == 0, err
    assert "…" in err  # progress goes to stderr, the JSON alone to stdout
    return json.loads(out), left


@pytest.mark.timeout(420)
def test_bench_invoke_reports_every_figure_and_goal(tmp_path: pathlib.Path) -> None:
    figures, left = _run_bench(
        tmp_path, ["invoke", "--json", "--seconds", "0.2", "--rounds", "1"], timeout=360
    )
    for name in FIGURES:
        value = figures.get(name)
        assert isinstance(value, float) and math.isfinite(value), (name, value)
        # A hop may cost less than the noise.
        if not name.startswith(("forwarding_hop_", "hop_warm_over", "hop_cold_over")):
            assert value > 0, (name, value)
    for goal in GOALS:
        assert isinstance(figures[f"goal_{goal}_ratio"], float), goal
        assert figures[f"goal_{goal}_limit"] > 0, goal
        assert isinstance(figures[f"goal_{goal}_met"], bool), goal
    assert left == [], left


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--seconds", "0"], "error: --seconds must be above 0"),
        (["--seconds", "nan"], "error: --seconds must be above 0"),
        (["--rounds", "0"], "error: --rounds must be 1 to 10,000"),
    ],
)
def test_bench_invoke_refuses_a_bad_argument_before_it_starts_anything(
    tmp_path: pathlib.Path, option: list[str], message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMESX_")}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "hermesx", "bench", "invoke", *option],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert processes_with_home(tmp_path) == []  # no cluster was started, not even for a moment
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(300)
def test_bench_breakdown_splits_a_plain_and_a_durable_call_by_process(
    tmp_path: pathlib.Path,
) -> None:
    figures, left = _run_bench(tmp_path, ["breakdown", "--json", "--seconds", "1"], timeout=240)
    for kind in ("plain", "durable"):
        assert figures[f"{kind}_calls"] > 0
        assert figures[f"{kind}_wall_p50_us"] > 0
        for role in ("client", "node", "storesite"):
            assert math.isfinite(figures[f"{kind}_{role}_cpu_us"]), (kind, role)
        assert math.isfinite(figures[f"{kind}_waiting_us"])
    # A durable call's checkpoint reaches the storesite: its LMDB commit shows.
    assert figures["durable_storesite_cpu_us"] > 0
    assert left == [], left


@pytest.mark.timeout(300)
def test_bench_invoke_interrupted_mid_measurement_leaves_no_process(
    tmp_path: pathlib.Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMESX_")}
    env["TMPDIR"] = str(tmp_path)
    proc = tethered(
        [sys.executable, "-m", "hermesx", "bench", "invoke", "--seconds", "60"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        seen: list[str] = []
        while not any(re.search(r"measuring \d+ loads", line) for line in seen):
            line = proc.stderr.readline()
            assert line, f"the benchmark ended early: {''.join(seen)}"
            seen.append(line)
        assert len(processes_with_home(tmp_path)) >= 9  # two clusters, two echo servers
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert processes_with_home(tmp_path) == []
    finally:
        proc.kill()
        kill_processes_with_home(tmp_path)
