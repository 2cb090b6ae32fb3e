"""`hermesx logs`: an atom's lines across a move and a kill -9 and recovery (docs/DESIGN.md §12)."""

from __future__ import annotations

import json
import pathlib
import queue
import subprocess
import sys
import threading
from typing import Any

import pytest
from cli_here import run_hermesx_here

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.testing.cli import cluster_env
from hermesx.testing.metrics import metric_value, scrape
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration

CHATTY_CALLS = 100  # 6.4 MiB of lines if nothing but the per-call bound held them


def hermesx(cluster: LocalCluster, *argv: str) -> subprocess.CompletedProcess[str]:
    """``hermesx ARGV`` in this process; `logs --follow` below runs as its own process."""
    return run_hermesx_here(cluster_env(cluster), *argv)


def logged(cluster: LocalCluster, name: str) -> list[tuple[str, str, int]]:
    """(text, node, age) of each line `hermesx logs NAME --json` shows."""
    done = hermesx(cluster, "logs", name, "--json")
    assert done.returncode == 0, done.stderr
    return [(x["text"], x["node"], x["age"]) for x in json.loads(done.stdout)["lines"]]


@pytest.fixture(scope="module")
def recovering(cluster_factory: Any) -> LocalCluster:
    cluster: LocalCluster = cluster_factory(3, session_timeout=2.0)
    return cluster


def test_lines_follow_the_atom_across_a_move_and_a_recovery(
    recovering: LocalCluster, atoms: dict[str, pathlib.Path]
) -> None:
    cluster = recovering
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["echo"], name="diary", on="n1", checkpoint="every-call")
        client.atom("diary").log("written on n1")
        client.migrate("diary", "n2")
        client.atom("diary").log("written on n2")
        assert logged(cluster, "diary") == [("written on n1", "n1", 1), ("written on n2", "n2", 2)]

        cluster.kill("node-n2")
        try:
            # The call is retried until the storesite has recovered the atom elsewhere.
            client.atom("diary").log("written after the recovery")
            where = client.locate("diary")
            assert where.node in ("n1", "n3") and where.age > 2
            # The storesite counts the atom it recovered (on the node's death, or at a Locate).
            s1 = scrape(cluster, "storesite-s1")
            recovered = metric_value(s1, "hermesx_recoveries_total", outcome="ok")
            placed = metric_value(s1, "hermesx_storesite_activations_total", reason="recovery")
            assert recovered + placed >= 1
            lines = logged(cluster, "diary")
            assert lines[:2] == [("written on n1", "n1", 1), ("written on n2", "n2", 2)]
            assert lines[2:] == [("written after the recovery", where.node, where.age)]
            text = hermesx(cluster, "logs", "diary").stdout.splitlines()
            assert [line.split()[2] for line in text] == [
                "n1@1",
                "n2@2",
                f"{where.node}@{where.age}",
            ]
            assert hermesx(cluster, "logs", "diary", "--since", "1h").stdout.splitlines() == text
        finally:
            cluster.start_node(NodeSpec("n2"))
            cluster.wait_registered(nodes=["n2"])


def test_follow_shows_new_lines_as_the_atom_moves(
    recovering: LocalCluster, atoms: dict[str, pathlib.Path]
) -> None:
    cluster = recovering
    env = cluster_env(cluster)
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["echo"], name="chatty", on="n1", checkpoint="on-request")
        client.atom("chatty").log("before following")
        follower = subprocess.Popen(
            [sys.executable, "-m", "hermesx", "logs", "chatty", "-f"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [seen.put(line) for line in follower.stdout or ()], daemon=True
        ).start()
        shown: list[str] = []

        def shows(text: str) -> bool:
            while not seen.empty():
                shown.append(seen.get())
            return any(text in line for line in shown)

        try:
            wait_until(lambda: shows("before following"), timeout=30, what="the first line")
            client.migrate("chatty", "n3")
            client.atom("chatty").log("after the move")
            wait_until(lambda: shows("after the move"), timeout=30, what="the new line")
        finally:
            follower.terminate()
            follower.wait(10)
        assert [line.split()[2] for line in shown] == ["n1@1", "n3@2"], shown


def test_a_bad_duration_is_one_clear_error(recovering: LocalCluster) -> None:
    done = hermesx(recovering, "logs", "diary", "--since", "yesterday")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: --since 'yesterday' is not a duration: a number and s, m, h or d (e.g. 10m)"
    ]


def test_a_dormant_atom_shows_its_lines_and_stays_dormant(
    recovering: LocalCluster, atoms: dict[str, pathlib.Path]
) -> None:
    with Client(recovering.zk, recovering.name) as client:
        client.create(atoms["echo"], name="sleeper", on="n3", checkpoint="on-request")
        client.atom("sleeper").log("before sleeping")
        client.passivate("sleeper")
    for _ in range(2):  # reading its lines does not wake it
        done = hermesx(recovering, "logs", "sleeper", "--json")
        shown = json.loads(done.stdout)
        assert shown["where"] == "dormant"
        assert [(x["text"], x["node"]) for x in shown["lines"]] == [("before sleeping", "n3")]


def test_logs_of_an_unknown_atom_is_one_clear_error(recovering: LocalCluster) -> None:
    done = hermesx(recovering, "logs", "nobody-by-this-name")
    assert done.returncode != 0
    assert done.stderr.startswith("error: ") and "nobody-by-this-name" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_atom_logging_on_every_call_cannot_grow_its_nodes_log_without_end(
    recovering: LocalCluster, atoms: dict[str, pathlib.Path]
) -> None:
    """The runtime bounds what one call logs (64 KiB); a client calling an atom that
    logs that much on every call grew its node's log by 64 KiB a call, without end."""
    cluster = recovering
    node_log = cluster.dir / "node-n3.log"
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["memhog"], name="loud", on="n3", checkpoint="on-request")
        before = node_log.stat().st_size
        for _ in range(CHATTY_CALLS):
            assert client.atom("loud").log_flood(16, 4) == 16  # 16 lines of 4 KiB
        grown = node_log.stat().st_size - before
        print(f"node log grew {grown} bytes over {CHATTY_CALLS} calls")
        assert grown < 1 * 2**20, f"the node's log grew {grown} bytes"
        # The atom's own lines are still all kept where `hermesx logs` reads them.
        lines = logged(cluster, "loud")
        assert lines and all(node == "n3" for _, node, _ in lines)
        assert client.atom("loud").log_flood(1, 1) == 1  # and the atom answers on
