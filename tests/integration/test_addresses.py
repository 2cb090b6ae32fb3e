"""The address a node registers is one its peers dial (docs/DESIGN.md §8), never a wildcard."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import uuid

import pytest

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster, NodeSpec

pytestmark = pytest.mark.integration


def test_a_node_registers_its_advertised_address_and_serves_atoms_moved_to_it(
    cluster_factory: object, atoms: dict[str, pathlib.Path]
) -> None:
    specs = [NodeSpec("n1"), NodeSpec("n2", options=("--advertise", "localhost"))]
    cluster: LocalCluster = cluster_factory(specs)  # type: ignore[operator]
    with Client(cluster.zk, cluster.name) as client:
        address = client.nodes()["n2"].address
        assert address.startswith("localhost:") and int(address.rpartition(":")[2]) > 0
        # Calls reach it on its call channel, on the same advertised host.
        call = client.nodes()["n2"].data["call"]
        assert call.startswith("localhost:") and int(call.rpartition(":")[2]) > 0
        name = f"adv-{uuid.uuid4().hex[:8]}"
        client.create(atoms["counter"], name=name, on="n1")
        client.atom(name).incr(2)
        client.migrate(name, "n2")
        assert client.locate(name).node == "n2"
        assert client.atom(name).incr(3) == 5


def test_a_wildcard_listen_on_a_host_without_a_route_is_refused_in_one_line() -> None:
    """In a namespace with only its loopback there is no primary address to register."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    namespace = f"hxa-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", namespace], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"ip netns add is not permitted here: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        argv = ["node", "serve", "--name", "n9", "--listen", "0.0.0.0:0"]
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-m", "hermesx", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HERMESX_ZK": "127.0.0.1:9", "HERMESX_CLUSTER": "adv"},
        )
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), done.stderr
    assert "node n9 listens on 0.0.0.0:0" in lines[-1] and "--advertise" in lines[-1]
