"""`hermesx bench storesite` figures (docs/DESIGN.md §8): every figure is there and plausible."""

from __future__ import annotations

import pathlib

from storesite.bench import run


def test_bench_reports_latency_and_throughput_per_size(tmp_path: pathlib.Path) -> None:
    figures = run(count=10, data_dir=tmp_path)
    for via in ("store", "grpc"):
        for size in ("4k", "64k"):
            assert figures[f"{via}_{size}_p99_us"] >= figures[f"{via}_{size}_p50_us"] > 0
            assert figures[f"{via}_{size}_per_s"] > 0
    assert figures["grpc_64k_4callers_per_s"] > 0
    assert figures["grpc_over_store_4k_p50_ratio"] > 0
    assert list(tmp_path.iterdir()) == []  # the benchmark cleans up its data dir
