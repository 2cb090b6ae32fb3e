"""Fixtures for integration tests: real local clusters of node and storesite processes.

ZooKeeper comes from the session-wide server in tests/conftest.py; each cluster
gets its own name (its own root in ZooKeeper) and its own HERMESX_HOME, and
is always stopped, with the logs of its processes printed when a test fails.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator

import pytest

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.rpc.roles import TEST_CERT_NAME
from hermesx.runtime.build import build_examples

_counter = 0


def _unique(prefix: str) -> str:
    global _counter
    _counter += 1
    return f"{prefix}{os.getpid()}x{_counter}"


@pytest.fixture(scope="session")
def atoms() -> dict[str, pathlib.Path]:
    """The example atoms, built once: name -> .wasm path."""
    return {p.stem: p for p in build_examples(quiet=True)}


ClusterFactory = Callable[..., LocalCluster]


def _dump_logs(cluster: LocalCluster) -> None:
    for log in sorted(cluster.dir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-40:]
        print(f"\n===== {log.name} (last {len(lines)} lines) =====")
        print("\n".join(lines))


@pytest.fixture(scope="module")
def cluster_factory(
    zk_server: object, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ClusterFactory]:
    """Start local clusters on the shared ZooKeeper; all stopped at the end of the module."""
    started: list[LocalCluster] = []
    home = tmp_path_factory.mktemp("hermesx-home")
    old_home = os.environ.get("HERMESX_HOME")
    os.environ["HERMESX_HOME"] = str(home)

    def start(
        nodes: int | list[NodeSpec] = 3,
        *,
        storesites: tuple[str, ...] = ("s1",),
        session_timeout: float = 4.0,
        test_hooks: bool = True,
    ) -> LocalCluster:
        specs = [NodeSpec(f"n{i + 1}") for i in range(nodes)] if isinstance(nodes, int) else nodes
        cluster = LocalCluster(_unique("t"), session_timeout=session_timeout, test_hooks=test_hooks)
        started.append(cluster)
        cluster.up(specs, storesites=storesites, zk=zk_server.connect_string)  # type: ignore[attr-defined]
        return cluster

    yield start
    failed = getattr(request.module, "_hermesx_failed", False)
    for cluster in started:
        if failed:
            _dump_logs(cluster)
        cluster.down()
    if old_home is None:
        os.environ.pop("HERMESX_HOME", None)
    else:
        os.environ["HERMESX_HOME"] = old_home


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        # Mark the module so its cluster fixture prints the processes' logs.
        item.module._hermesx_failed = True  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def cluster(cluster_factory: ClusterFactory) -> LocalCluster:
    """One 3-node cluster (n1, n2, n3) with one storesite (s1), shared by a module's tests."""
    return cluster_factory(3)


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.zk, cluster.name) as c:
        yield c


@pytest.fixture
def tester(cluster: LocalCluster) -> Iterator[Client]:
    """A client showing the test certificate: it may also call the test hooks (StashPut, ...)."""
    with Client(cluster.zk, cluster.name, cert=TEST_CERT_NAME) as c:
        yield c


@pytest.fixture
def unique_name() -> str:
    return _unique("a")
