"""Prometheus metrics of a real node and storesite (docs/DESIGN.md §12)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import httpx
import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.local.cluster import LocalCluster
from hermesx.testing.cli import run_hermesx
from hermesx.testing.clusters import wait_for_log
from hermesx.testing.metrics import metric_value as value
from hermesx.testing.metrics import scrape
from hermesx.testing.moves import move_in_background

pytestmark = pytest.mark.integration


NODE_METRICS = {
    "hermesx_calls",
    "hermesx_call_seconds",
    "hermesx_forwards",
    "hermesx_moved",
    "hermesx_storesite_fallbacks",
    "hermesx_calls_held",
    "hermesx_checkpoints",
    "hermesx_checkpoint_seconds",
    "hermesx_migrations",
    "hermesx_migration_seconds",
    "hermesx_activations",
    "hermesx_fences",
    "hermesx_fenced",
    "hermesx_active_atoms",
    "hermesx_staged_copies",
}
STORESITE_METRICS = {
    "hermesx_storesite_checkpoints",
    "hermesx_storesite_checkpoint_seconds",
    "hermesx_storesite_activations",
    "hermesx_recoveries",
    "hermesx_storesite_atoms",
}


def test_node_and_storesite_metrics_count_calls_moves_and_checkpoints(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    assert {"node-n1", "node-n2", "node-n3", "storesite-s1"} <= set(cluster.metrics)
    before = scrape(cluster, "node-n1")
    guid = client.create(atoms["counter"], name=unique_name, on="n1", checkpoint="every-call")
    for _ in range(5):
        client.atom(unique_name).incr(1)
    with pytest.raises(Exception):  # noqa: B017 - an error outcome counts too
        client.invoke(unique_name, "no_such_method", codec.pack(None))
    client.migrate(unique_name, "n2")
    # n1's stash points to n2: a call entering at n1 is forwarded.
    outcome = client.invoke(guid, "incr", codec.pack(1), via="n1", trace=True)
    assert [h.event for h in outcome.trace][-2:] == ["forward", "ran"]
    client.checkpoint(unique_name)
    other = client.create(atoms["counter"], name=unique_name + "-sleepy", on="n3")
    client.passivate(other)

    n1, n2, s1 = (
        scrape(cluster, "node-n1"),
        scrape(cluster, "node-n2"),
        scrape(cluster, "storesite-s1"),
    )
    assert set(n1) >= NODE_METRICS, NODE_METRICS - set(n1)
    assert set(s1) >= STORESITE_METRICS, STORESITE_METRICS - set(s1)

    def grew(name: str, **labels: str) -> float:
        return value(n1, name, **labels) - value(before, name, **labels)

    assert grew("hermesx_calls_total", outcome="ok") == 5
    assert grew("hermesx_calls_total", outcome="method") == 1
    assert grew("hermesx_call_seconds_count") == 6
    assert 0 < grew("hermesx_call_seconds_sum") < 60
    assert grew("hermesx_checkpoints_total", outcome="ok") >= 5  # every call, and the create
    assert grew("hermesx_checkpoint_seconds_count") >= 5
    assert grew("hermesx_migrations_total", outcome="ok") == 1
    assert grew("hermesx_migration_seconds_count") == 1
    assert grew("hermesx_forwards_total") == 1
    assert value(n1, "hermesx_fenced") == 0
    assert value(n2, "hermesx_activations_total", how="move") >= 1
    assert value(n2, "hermesx_active_atoms") >= 1
    assert value(n2, "hermesx_calls_total", outcome="ok") >= 1
    assert value(n2, "hermesx_checkpoints_total", outcome="ok") >= 2  # the forwarded call, ours
    assert value(s1, "hermesx_storesite_checkpoints_total", outcome="ok") >= 7
    assert value(s1, "hermesx_storesite_checkpoint_seconds_count") >= 7
    assert value(s1, "hermesx_storesite_atoms", state="active") >= 1
    assert value(s1, "hermesx_storesite_atoms", state="dormant") >= 1


def test_hermesx_up_prints_where_every_part_serves_its_metrics(
    tmp_path: pathlib.Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMESX_")}
    env.update({"HERMESX_HOME": str(tmp_path / "home"), "HERMESX_CLUSTER": f"up{os.getpid()}"})

    def hermesx(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_hermesx(env, *argv)

    up = hermesx("up", "--nodes", "1", "--json")
    try:
        assert up.returncode == 0, up.stderr
        where = json.loads(up.stdout)["metrics"]
        assert set(where) == {"node-n1", "storesite-s1"}
        for part, url in where.items():
            text = httpx.get(url, timeout=5).text
            wanted = (
                "hermesx_active_atoms" if part.startswith("node") else "hermesx_storesite_atoms"
            )
            assert f"\n{wanted}" in text, (part, text[:200])
    finally:
        hermesx("down")


def test_a_call_that_waits_out_a_move_is_counted_as_held(
    cluster: LocalCluster,
    client: Client,
    tester: Client,
    atoms: dict[str, pathlib.Path],
    unique_name: str,
) -> None:
    guid = client.create(atoms["counter"], name=unique_name, on="n1")
    before = scrape(cluster, "node-n1")
    tester.node_client.pause_at(tester.node_member("n1"), "prepared", 1.5)
    mover, moved = move_in_background(client, unique_name, "n2")
    # Frozen and prepared, paused there: a call now waits for the move to let go.
    wait_for_log(cluster, "storesite-s1", f"prepared move of {guid}")
    assert client.atom(unique_name).incr(1) == 1
    mover.join(30)
    assert moved == ["moved"]
    after = scrape(cluster, "node-n1")
    assert value(after, "hermesx_calls_held_total") - value(before, "hermesx_calls_held_total") == 1
    assert value(after, "hermesx_forwards_total") > value(before, "hermesx_forwards_total")
