"""A node whose disk is full keeps its promises (docs/DESIGN.md §5, §6).

A node writes little to its data directory: the module cache when an atom
is created there, and the stash (its forwarding pointers, written without
sync: a cache a crash may lose). Here node n1's data directory is a small
tmpfs, in a mount namespace of the node's own, filled up after an atom was
created there. Moving that atom away then failed at the stash's write of the
forwarding pointer, after the move had committed: the client was told
`storage` for a move that happened, and the atom's frozen copy on n1 was
never retired, so calls waiting on it hung until their deadline (15 s).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import threading

import pytest

from hermesx.client import Client
from hermesx.core.errors import HermesError
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.testing.clusters import wait_for_log
from hermesx.testing.plugin import ClusterFactory

pytestmark = pytest.mark.integration

DISK = "8m"


def _start_node_on_a_small_disk(cluster: LocalCluster, name: str) -> pathlib.Path:
    """Start node ``name`` with its data directory on a tmpfs of ``DISK`` of its own."""
    data = cluster.dir / f"node-{name}"
    data.mkdir(mode=0o700, exist_ok=True)
    spawn = cluster._spawn
    mount = f'mount -t tmpfs -o size={DISK},mode=0700 tmpfs {data} && exec "$@"'

    def in_a_namespace(part: str, argv: list[str]) -> int:
        # exec keeps the pid, so the cluster stops the node itself.
        wrapped = ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh"]
        return spawn(part, [*wrapped, *argv])

    cluster._spawn = in_a_namespace  # type: ignore[method-assign]
    try:
        cluster.start_node(NodeSpec(name))
    finally:
        del cluster._spawn
    cluster.wait_registered(nodes=[name])
    return data


def _fill(pid: int, data: pathlib.Path) -> None:
    """Fill the node's disk (seen from its mount namespace) to the last byte."""
    subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "sh", "-c", f"cat /dev/zero > {data}/ballast"],
        capture_output=True,
        timeout=30,
    )
    df = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "df", "--output=avail", str(data)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert df.stdout.split()[-1] == "0", df.stdout


@pytest.fixture(scope="module")
def small_disk_cluster(cluster_factory: ClusterFactory) -> tuple[LocalCluster, pathlib.Path]:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("a tmpfs in a mount namespace needs root, unshare and nsenter")
    cluster = cluster_factory(["n2"])
    return cluster, _start_node_on_a_small_disk(cluster, "n1")


def test_a_move_away_from_a_node_whose_disk_is_full_succeeds_and_frees_its_copy(
    small_disk_cluster: tuple[LocalCluster, pathlib.Path],
    atoms: dict[str, pathlib.Path],
    unique_name: str,
) -> None:
    """~2 s: a cluster of its own (one node on a tmpfs)."""
    cluster, data = small_disk_cluster
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["counter"], name=unique_name, on="n1", checkpoint="every-call")
        counter = client.atom(unique_name)
        assert counter.incr(1) == 1
        _fill(cluster.procs["node-n1"], data)
        acked = [1]
        stop = threading.Event()
        failures: list[str] = []

        def load() -> None:
            while not stop.is_set():
                try:
                    acked.append(counter.incr(1))
                except HermesError as exc:
                    failures.append(f"{exc.kind}: {exc}")

        calling = threading.Thread(target=load)
        calling.start()
        try:
            moved = client.migrate(unique_name, "n2")
        finally:
            stop.set()
            calling.join(timeout=60)
        assert moved.tad.node == "n2", moved
        assert client.locate(unique_name).node == "n2"
        assert not failures, failures[:3]
        assert counter.get() == len(acked) == max(acked)
    wait_for_log(cluster, "node-n1", "kept in memory only")
