"""Where an atom may be put: its tags hold on every path, and ``move_to`` hears a refusal.

An atom's tags (``create --tags``) name what every node hosting it must carry.
The storesite's placement always honoured them; naming the node by hand
(``create --on``, ``migrate``) or from inside the atom (``move_to``) must too,
with an error that names the node and the tags it lacks (issue 11, item 10).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import uuid

import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import ConfigurationError, MethodError, MigrationError
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tagged(cluster_factory: object) -> LocalCluster:
    """n1 and n3 carry ``gpu``; n2 carries only ``ssd``."""
    specs = [NodeSpec("n1", ("gpu",)), NodeSpec("n2", ("ssd",)), NodeSpec("n3", ("gpu", "eu"))]
    return cluster_factory(specs)  # type: ignore[operator,no-any-return]


@pytest.fixture
def client(tagged: LocalCluster) -> Client:
    with Client(tagged.zk, tagged.name) as c:
        yield c  # type: ignore[misc]


def _name() -> str:
    return f"pg-{uuid.uuid4().hex[:10]}"


def test_create_on_a_node_without_the_atoms_tags_is_refused_and_nothing_is_left(
    client: Client, atoms: dict[str, pathlib.Path]
) -> None:
    name = _name()
    before = client.node_status("n2").active_atoms
    with pytest.raises(ConfigurationError) as caught:
        client.create(atoms["counter"], name=name, on="n2", tags=["gpu"])
    message = str(caught.value)
    assert "node n2 lacks tag(s) gpu" in message and "node tags: ssd" in message
    assert client.node_status("n2").active_atoms == before
    assert name not in client.names()  # the name is free for a retry elsewhere
    guid = client.create(atoms["counter"], name=name, on="n1", tags=["gpu"])
    assert client.locate(guid).node == "n1"


def test_the_cli_names_the_node_and_the_missing_tags(
    tagged: LocalCluster, atoms: dict[str, pathlib.Path]
) -> None:
    env = {**os.environ, "HERMESX_ZK": tagged.zk, "HERMESX_CLUSTER": tagged.name}
    argv = ["create", str(atoms["counter"]), "--on", "n2", "--tags", "gpu,eu", "--json", "-q"]
    proc = subprocess.run(
        [sys.executable, "-m", "hermesx", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "node n2 lacks tag(s) eu,gpu" in lines[0]
    assert json.loads(proc.stdout)["kind"] == "configuration"


def test_migrate_to_a_node_without_the_atoms_tags_is_refused_and_the_atom_stays(
    client: Client, atoms: dict[str, pathlib.Path]
) -> None:
    name = _name()
    client.create(atoms["counter"], name=name, on="n1", tags=["gpu"])
    assert client.atom(name).incr(1) == 1
    with pytest.raises(MigrationError, match=r"node n2 lacks tag\(s\) gpu"):
        client.migrate(name, "n2")
    assert client.locate(name).node == "n1"
    assert client.atom(name).incr(1) == 2
    client.migrate(name, "n3")  # carries gpu: allowed
    assert client.locate(name).node == "n3"
    assert client.atom(name).incr(1) == 3


def test_move_to_an_unknown_node_or_one_without_the_tags_returns_an_error_to_the_atom(
    tagged: LocalCluster, client: Client, atoms: dict[str, pathlib.Path]
) -> None:
    name = _name()
    client.create(atoms["mover"], name=name, on="n1", tags=["gpu"])
    # The mover atom fails its call when move_to returns non-zero.
    with pytest.raises(MethodError, match="move refused to node nosuch"):
        client.atom(name).go("nosuch")
    with pytest.raises(MethodError, match="move refused to node n2"):
        client.atom(name).go("n2")
    assert client.atom(name).where() == "n1"
    log = (tagged.dir / "node-n1.log").read_text(errors="replace")
    assert "move_to nosuch refused: node 'nosuch' is not a live member" in log
    assert "move_to n2 refused: node n2 lacks tag(s) gpu" in log
    # A node that fits still works, and naming the node it is on is a no-op.
    assert client.atom(name).go("n1") == "n1"
    assert client.atom(name).go("n3") == "n1"
    wait_until(lambda: client.locate(name).node == "n3", 10.0, "the atom to move to n3")
    assert codec.unpack(client.invoke(name, "where", codec.pack(None)).result) == "n3"
