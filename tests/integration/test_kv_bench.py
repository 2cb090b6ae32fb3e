"""`hermesx bench kv --json` (docs/DESIGN.md §8, §11): every figure is there and is a number.

Tiny counts: this checks the benchmark runs end to end against the KV store
and a real Redis, and stops everything it started; it asserts no speed.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")
def test_bench_kv_gives_every_figure_as_a_number() -> None:
    tiny = ["--keys", "200", "--threads", "2", "--seconds", "0.3", "--shards", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "hermesx", "bench", "kv", "--json", "-q", *tiny],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    for system in ("kv_plain", "kv_durable", "redis_noaof", "redis_fsync_always"):
        for workload in ("A", "B"):
            for figure in ("ops_per_s", "p50_us", "p99_us"):
                assert f"{system}_{workload}_{figure}" in figures
    for name in (
        "ratio_A_kv_plain_vs_redis_noaof",
        "ratio_B_kv_durable_vs_redis_fsync_always",
        "tx_transfers_committed_per_s",
        "tx_abort_rate",
    ):
        assert name in figures
    for name, value in figures.items():
        assert isinstance(value, int | float) and math.isfinite(value), name
    assert figures["kv_plain_A_ops_per_s"] > 0 and figures["redis_noaof_B_ops_per_s"] > 0
    # The Redis servers it started are gone.
    assert (
        "hermesx-redis-"
        not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    )
