"""Files and ZooKeeper locked down (issue item 9).

Storesite data, ZooKeeper's data and log, process logs, node data and the
cluster's certificates were readable by every local user, and ``/hermesx``
was writable by anyone, so a local user could squat a future cluster's name.
``hermesx up`` (with its own ZooKeeper, as a user runs it) now leaves every
directory 0700 and every file 0600, and its ZooKeeper's ``/hermesx`` refuses
sessions without the cluster's secret; the clients' secret only reads.
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cli_here import run_hermesx_here
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from hermesx.rpc import security

pytestmark = pytest.mark.integration


def _hermesx(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hermesx", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def local_cluster(
    tmp_path_factory: pytest.TempPathFactory, atoms: dict[str, pathlib.Path]
) -> Iterator[tuple[dict[str, str], pathlib.Path, str]]:
    """`hermesx up` in a fresh HERMESX_HOME (made by hermesx itself), with atoms' state in it."""
    home = tmp_path_factory.mktemp("files") / "hermesx-home"
    cluster = f"files{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMESX_")}
    env.update({"HERMESX_HOME": str(home), "HERMESX_CLUSTER": cluster})
    up = _hermesx(env, "up", "--nodes", "2", "--json")
    try:
        assert up.returncode == 0, up.stderr
        zk = json.loads(up.stdout)["zk"]
        # Its HTTP gateway too (docs/DESIGN.md §13): its files are as private.
        assert json.loads(up.stdout)["gateway"].startswith("https://127.0.0.1:")
        # State in every store: a module, checkpoints, a passivation, stashes (each verb
        # by the command's entry point in this process; `up`, `down` and the last
        # invoke below run as processes).
        for argv in [
            ["create", str(atoms["counter"]), "--name", "c", "--on", "n1"],
            ["invoke", "c", "incr", "5"],
            ["migrate", "c", "n2"],
            ["passivate", "c"],
            ["invoke", "c", "incr", "1", "--via", "n1"],
        ]:
            done = run_hermesx_here(env, *argv)
            assert done.returncode == 0, (argv, done.stderr)
        yield env, home, zk
    finally:
        _hermesx(env, "down")


def test_everything_a_local_cluster_creates_is_private_to_its_user(
    local_cluster: tuple[dict[str, str], pathlib.Path, str],
) -> None:
    _env, home, _zk = local_cluster
    seen = {"dirs": 0, "files": 0}
    exposed = []
    for path in [home, *home.rglob("*")]:
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):
            seen["dirs"] += 1
            if mode != 0o700:
                exposed.append(f"{oct(mode)} {path.relative_to(home.parent)}/")
        elif stat.S_ISREG(info.st_mode):
            seen["files"] += 1
            if mode != 0o600:
                exposed.append(f"{oct(mode)} {path.relative_to(home.parent)}")
    assert exposed == []
    # What the issue named is among what was checked.
    names = {p.name for p in home.rglob("*")}
    assert {"data.mdb", "ca.key", "zk.secret", "zoo.cfg", "zookeeper.log", "node-n1.log"} <= names
    assert {"gateway.log", "gateway.pem", "gateway.key", "idempotency.sqlite"} <= names
    assert seen["files"] > 20 and seen["dirs"] > 8, seen


def test_an_unauthenticated_zookeeper_session_cannot_create_under_hermesx(
    local_cluster: tuple[dict[str, str], pathlib.Path, str],
) -> None:
    env, home, zk = local_cluster
    cluster = env["HERMESX_CLUSTER"]
    outsider = KazooClient(hosts=zk, timeout=10.0)
    outsider.start(timeout=15.0)
    try:
        # A local user squatting a future cluster's name, or forging in ours.
        with pytest.raises(NoAuthError):
            outsider.create("/hermesx/future-cluster", b"")
        with pytest.raises(NoAuthError):
            outsider.create(f"/hermesx/{cluster}/names/forged", b"s1:" + b"0" * 32)
        with pytest.raises(NoAuthError):
            outsider.delete(f"/hermesx/{cluster}", recursive=True)
        assert "future-cluster" not in outsider.get_children("/hermesx")
    finally:
        outsider.stop()
        outsider.close()

    # The clients' secret reads the cluster, and writes nothing.
    user, password = security.zk_auth(home / "clusters" / cluster / "tls", "client")
    assert user == "hermesx-client"
    reader = KazooClient(hosts=zk, timeout=10.0, auth_data=[("digest", f"{user}:{password}")])
    reader.start(timeout=15.0)
    try:
        assert reader.get(f"/hermesx/{cluster}/names/c")[0].startswith(b"s1:")
        assert set(reader.get_children(f"/hermesx/{cluster}/nodes")) == {"n1", "n2"}
        with pytest.raises(NoAuthError):
            reader.create(f"/hermesx/{cluster}/names/forged", b"s1:" + b"0" * 32)
        with pytest.raises(NoAuthError):
            reader.delete(f"/hermesx/{cluster}/names/c")
        with pytest.raises(NoAuthError):
            reader.create("/hermesx/future-cluster", b"")
    finally:
        reader.stop()
        reader.close()
    # And the cluster serves as before.
    done = _hermesx(env, "invoke", "c", "get")
    assert done.returncode == 0 and done.stdout.strip() == "6", done.stderr
