"""How `hermesx bench invoke` judges its goals and `bench breakdown` reads profiler stacks."""

from __future__ import annotations

from hermesx.bench.breakdown import frame_paths, stage_of
from hermesx.bench.goals import judge, report
from hermesx.cli.output import table

FIGURES = {
    "tcp_floor_c1_p50_us": 100.0,
    "tcp_floor_c8_calls_per_s": 10_000.0,
    "invoke_c1_p50_us": 140.0,
    "invoke_insecure_c1_p50_us": 100.0,
    "invoke_c8_calls_per_s": 3_000.0,
    "durable_c1_p50_us": 500.0,
    "disk_sync_4k_p50_us": 100.0,
    "durable_c8_calls_per_s": 1_000.0,
    "forwarding_hop_us": 400.0,
    "first_call_0_hops_p50_us": 500.0,
    "forwarding_hop_warm_us": 140.0,
    "runtime_call_p50_us": 6.0,
}


def test_each_goal_is_a_ratio_of_the_run_with_its_verdict() -> None:
    figures = dict(FIGURES)
    judge(figures)
    assert figures["goal_plain_p50_over_floor_ratio"] == 1.4
    assert figures["goal_plain_p50_over_floor_met"] is True
    assert figures["goal_plain_c8_rate_over_floor_met"] is False  # 0.3 < 0.4
    assert abs(figures["goal_tls_cost_ratio"] - 0.4) < 1e-9
    assert figures["goal_tls_cost_met"] is False
    assert figures["goal_durable_p50_over_budget_ratio"] == 500 / (140 + 300)
    assert figures["goal_durable_p50_over_budget_met"] is False
    assert figures["goal_durable_c8_rate_over_plain_met"] is False  # 1/3 < 0.5
    # The dearer of a cold hop over a cold direct call (0.8) and a warm one over a warm
    # call (exactly one plain call).
    assert figures["goal_hop_over_plain_ratio"] == 1.0
    assert figures["goal_hop_over_plain_met"] is True
    assert figures["goal_runtime_call_met"] is False
    text = report(figures, table)
    assert "plain call p50 <= 1.5 x TCP floor p50" in text
    assert "NOT met" in text and " met" in text


def test_a_hop_is_judged_cold_against_a_cold_call_and_warm_against_a_warm_one() -> None:
    # A cold hop of 400 us after a cold direct call of 300 us: over one plain call,
    # though a warm hop costs less than a warm call.
    figures = {**FIGURES, "first_call_0_hops_p50_us": 300.0, "forwarding_hop_warm_us": 100.0}
    judge(figures)
    assert abs(figures["goal_hop_over_plain_ratio"] - 4 / 3) < 1e-9
    assert figures["goal_hop_over_plain_met"] is False
    # A warm hop dearer than a warm call fails it whatever the cold one costs.
    figures = {**FIGURES, "forwarding_hop_us": 100.0, "forwarding_hop_warm_us": 280.0}
    judge(figures)
    assert figures["goal_hop_over_plain_ratio"] == 2.0
    assert figures["goal_hop_over_plain_met"] is False


def test_a_goal_without_its_figures_is_left_out() -> None:
    figures = {"runtime_call_p50_us": 4.0}
    judge(figures)
    assert figures["goal_runtime_call_met"] is True
    assert not any(k.startswith("goal_tls_cost") for k in figures)


def _stack(*files: str) -> list[str]:
    return frame_paths(";".join(f"f{i} ({path}:{i + 1})" for i, path in enumerate(files)))


def test_profiled_stacks_fall_into_the_stages_of_a_call() -> None:
    server = ("threading.py", "grpc/_server.py", "hermesx/node/server.py")
    dispatch = (*server, "hermesx/node/dispatch.py")
    assert stage_of("node", _stack("threading.py", "grpc/_server.py")) == "transport"
    assert stage_of("node", _stack(*dispatch, "hermesx/runtime/atom.py")) == "runtime"
    assert stage_of("node", _stack(*dispatch, "hermesx/runtime/atom.py", "wasmtime/_func.py")) == (
        "wasm"
    )
    checkpoint = (*dispatch, "hermesx/node/checkpoints.py")
    assert stage_of("node", _stack(*checkpoint, "grpc/_channel.py")) == "checkpoint_send"
    assert stage_of("node", _stack(*checkpoint, "hermesx/core/snapshot.py")) == (
        "checkpoint_snapshot"
    )
    assert stage_of("node", _stack(*dispatch)) == "dispatch"
    assert stage_of("node", _stack("threading.py", "kazoo/handlers/threading.py")) == "other"
    bench = ("hermesx/bench/breakdown.py", "hermesx/client/api.py")
    assert stage_of("client", _stack(*bench, "hermesx/routing/invoker.py")) == "hermesx"
    assert stage_of("client", _stack(*bench, "grpc/_channel.py")) == "transport"
    assert stage_of("client", _stack("threading.py", "kazoo/client.py")) == "other"
    handler = ("grpc/_server.py", "storesite/server.py", "storesite/service.py")
    assert stage_of("storesite", _stack(*handler, "storesite/store.py")) == "commit"
    assert stage_of("storesite", _stack(*handler)) == "handler"
    assert stage_of("storesite", _stack("threading.py", "storesite/service.py")) == "other"


def test_a_frame_without_a_line_number_keeps_its_file() -> None:
    assert frame_paths("<module> (/abs/x.py);run (pkg/mod.py:3)") == ["/abs/x.py", "/pkg/mod.py"]


def test_an_incremental_checkpoint_counts_as_taking_the_state() -> None:
    checkpoint = ("hermesx/node/dispatch.py", "hermesx/node/checkpoints.py")
    assert stage_of("node", _stack(*checkpoint, "hermesx/runtime/delta.py")) == (
        "checkpoint_snapshot"
    )


def test_a_call_channel_reader_thread_of_the_client_is_transport() -> None:
    assert stage_of("client", _stack("threading.py", "hermesx/rpc/link.py")) == "transport"


def test_a_storesite_committing_checkpoints_in_a_thread_of_its_own_serves_the_call() -> None:
    committer = ("threading.py", "storesite/committer.py")
    assert stage_of("storesite", _stack(*committer)) == "handler"
    assert stage_of("storesite", _stack(*committer, "storesite/store.py")) == "commit"
