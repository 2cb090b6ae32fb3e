"""Prometheus metrics of a real node and storesite (docs/DESIGN.md §11)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hermesx.client import Client
from hermesx.core import codec
from hermesx.local.cluster import LocalCluster

pytestmark = pytest.mark.integration


def scrape(cluster: LocalCluster, part: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Metric family -> {labels: value} from ``part``'s endpoint, as Prometheus reads it."""
    address = cluster.metrics[part]
    text = httpx.get(f"http://{address}/metrics", timeout=5).text
    families: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        samples = families.setdefault(family.name, {})
        for sample in family.samples:
            key = (("__name__", sample.name), *sorted(sample.labels.items()))
            samples[key] = sample.value
    return families


def value(
    families: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str
) -> float:
    """The sample ``name`` with ``labels`` (0 when the series has no sample yet)."""
    family = name
    for suffix in ("_total", "_count", "_sum"):
        family = family.removesuffix(suffix)
    want = (("__name__", name), *sorted(labels.items()))
    return families.get(family, {}).get(want, 0.0)


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
        return subprocess.run(
            [sys.executable, "-m", "hermesx", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

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
