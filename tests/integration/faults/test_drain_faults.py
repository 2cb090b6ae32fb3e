"""Drain under load: a node taken out of service moves its atoms away and no call fails.

See docs/DESIGN.md §5 "Drain". Three client threads call ``counter.incr(1)``
on an atom of the node being drained; every call's outcome is judged as in
the rest of the fault suite (``faultkit.tally``), and a drain must leave
none failed, lost or run twice. ``hermesx drain`` honours the atoms' tags
and marks the node out of service; SIGTERM on ``hermesx node serve`` drains
before the process exits.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
from typing import Any

import pytest
from faultkit import (
    ClusterStarter,
    LoadGenerator,
    Report,
    Tally,
    assert_nothing_lost,
    counter_cluster,
    final_value,
    tally,
)

from hermesx.client import Client
from hermesx.core.errors import UnreachableError
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.testing.clusters import part_log


def _cli(cluster: LocalCluster, *argv: str) -> Any:
    env = {**os.environ, "HERMESX_ZK": cluster.zk, "HERMESX_CLUSTER": cluster.name}
    done = subprocess.run(
        [sys.executable, "-m", "hermesx", *argv, "--json", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _no_call_failed(t: Tally) -> None:
    assert_nothing_lost(t)
    assert t.failed_clear == 0, f"{t.scenario}: {t.failed_clear} calls failed: {t}"
    assert t.acknowledged == t.attempted > 0, t


def test_drain_moves_every_atom_honouring_tags_and_no_call_fails(
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    specs = [NodeSpec("n1", ("gpu",)), NodeSpec("n2"), NodeSpec("n3", ("gpu",))]
    cluster = start_cluster(specs)
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
        client.create(atoms["counter"], name="g", on="n1", tags=["gpu"])
        for i in range(3):
            client.create(atoms["counter"], name=f"x{i}", on="n1")
        load = LoadGenerator(client.address.zk, client.address.cluster, "c", settle=False)
        with load:
            load.wait_acks(30)
            drained = _cli(cluster, "drain", "n1")
            load.wait_acks(30)
        final = final_value(client, "c")
        assert drained == {"node": "n1", "moved": 5, "remaining": 0, "failures": []}
        assert client.node_status("n1").active_atoms == 0
        assert client.node_status("n1").draining
        # The tagged atom went to the only other node carrying its tag.
        assert client.locate("g").node == "n3"
        assert client.locate("c").node in ("n2", "n3")
        # Out of service: no new atom is placed there; a create asked of it is refused.
        rows = {r["name"]: r for r in _cli(cluster, "nodes")}
        assert rows["n1"]["state"] == "draining" and rows["n2"]["state"] == "in service"
        assert client.locate(client.create(atoms["counter"])).node != "n1"
        with pytest.raises(UnreachableError, match="node n1 is draining"):
            client.create(atoms["counter"], on="n1")
        client.passivate("x0")
        assert client.locate("x0").node != "n1"  # its activation skips the draining node
    t = tally("drain: hermesx drain of the hosting node", load.records, final)
    report(t)
    _no_call_failed(t)


def test_sigterm_drains_the_node_then_it_exits(
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    with counter_cluster(start_cluster, atoms["counter"]) as (cluster, client):
        first = client.locate("c")
        load = LoadGenerator(client.address.zk, client.address.cluster, "c", settle=False)
        with load:
            load.wait_acks(30)
            cluster.kill("node-n1", signal.SIGTERM)  # returns once the process is reaped
            load.wait_acks(30)
        final = final_value(client, "c")
        where = client.locate("c")
    assert "drained: 1 atom(s) moved away" in part_log(cluster, "node-n1")
    # Moved (the next age), not recovered from a checkpoint after the node died.
    assert where.node == "n2" and where.age == first.age + 1, where
    t = tally("drain: SIGTERM of the hosting node", load.records, final)
    report(t)
    _no_call_failed(t)
