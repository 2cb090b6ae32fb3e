"""The pytest plugin of the harness: ZooKeeper, clusters, clients, and log dumps on failure.

Registered from tests/conftest.py (``pytest_plugins``). Like kazoo's own
harness, the run starts one real ZooKeeper (cheap: ~0.5 s, ~55 MiB) and
isolates tests by name: every cluster has its own root ``/hermesx/<name>``.
Clusters come from :class:`~hermesx.testing.clusters.ClusterPool`:
``cluster_factory`` (one pool per test module, 4 s sessions) and
``start_cluster`` (one pool per test, 2 s sessions, for the fault suite).
When a test fails, the last lines of the ZooKeeper log and of every process
log of the clusters open at the time are attached to its report.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import re
import signal
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.roles import TEST_CERT_NAME
from hermesx.runtime.build import build_examples
from hermesx.testing.bytecode import cache_for_children, remove_cache
from hermesx.testing.clusters import open_pool, open_pools
from nameservice import NameService
from nameservice.zookeeper import ZooKeeperServer, open_shared_root

_numbers = itertools.count(1)

ClusterFactory = Callable[..., LocalCluster]
_BYTECODE = pytest.StashKey[pathlib.Path | None]()


def pytest_configure(config: pytest.Config) -> None:
    """Take SIGINT back when the run started with it ignored.

    A shell without job control starts a background command (``pytest … &``)
    with SIGINT ignored, and an ignored signal stays ignored in every program
    started from it: the demo, a child test run or a benchmark that a test
    interrupts as Ctrl-C does would not see it, nor would this run. Python's
    own handler is not inherited: the processes the run starts get the default.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # The processes the run starts share a bytecode cache (hermesx/testing/bytecode.py).
    config.stash[_BYTECODE] = cache_for_children()


def pytest_unconfigure(config: pytest.Config) -> None:
    remove_cache(config.stash.get(_BYTECODE, None))


@pytest.fixture(scope="session")
def zk_server() -> Iterator[ZooKeeperServer]:
    """A standalone ZooKeeper on a free 127.0.0.1 port, shared by the whole run.

    Its ``/hermesx`` is made open first, as the operator of a ZooKeeper shared
    by many clusters would: the run's clusters each have a secret of their own,
    and the first of them would otherwise own ``/hermesx`` (see
    nameservice/client.py). Tests of that lock start a ZooKeeper of their own.
    """
    server = ZooKeeperServer()
    server.start()
    open_shared_root(server.connect_string)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster_name(request: pytest.FixtureRequest) -> str:
    """A cluster name of this test alone: its name, made path-safe, plus a counter."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-._")[:80]
    return f"{base or 'test'}-{next(_numbers)}"


@contextlib.contextmanager
def started_nameservice(zk: ZooKeeperServer, cluster: str, **options: Any) -> Iterator[NameService]:
    """A started NameService client of ``cluster`` with its own session, closed afterwards.

    ``options`` go to :class:`NameService` (e.g. ``auth``).
    """
    service = NameService(zk.connect_string, cluster, **options)
    service.start()
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def nameservice(zk_server: ZooKeeperServer, cluster_name: str) -> Iterator[NameService]:
    """A started NameService on this test's cluster, closed afterwards."""
    with started_nameservice(zk_server, cluster_name) as service:
        yield service


@pytest.fixture(scope="session")
def atoms() -> dict[str, pathlib.Path]:
    """The example atoms, built once: name -> .wasm path."""
    return {p.stem: p for p in build_examples(quiet=True)}


@pytest.fixture(scope="module")
def cluster_factory(
    zk_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterFactory]:
    """Start local clusters on the shared ZooKeeper; all stopped at the end of the module.

    Call it as ``cluster_factory(nodes=3, storesites=("s1",), session_timeout=4.0,
    test_hooks=True)``; ``nodes`` is a count or a list of names / NodeSpecs.
    """
    with open_pool("t", tmp_path_factory.mktemp("hermesx-home")) as pool:

        def start(nodes: Any = 3, **options: Any) -> LocalCluster:
            return pool.start(nodes, zk=zk_server.connect_string, **options)

        yield start


@pytest.fixture
def start_cluster(
    zk_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterFactory]:
    """Start local clusters for one test (2 s sessions); all stopped at its end.

    Call it as ``start_cluster(nodes, zk=None, session_timeout=2.0, node_zk=None,
    storesites=("s1",))``: ``zk`` is the run's ZooKeeper unless given (e.g. an
    ensemble); ``node_zk`` gives a node its own ZooKeeper connect string (a
    proxy the test can cut); the other parts use ``zk``.
    """
    with open_pool("fault", tmp_path_factory.mktemp("fault-home"), session_timeout=2.0) as pool:

        def start(nodes: Any = 3, *, zk: str | None = None, **options: Any) -> LocalCluster:
            return pool.start(nodes, zk=zk or zk_server.connect_string, **options)

        yield start


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
    """An atom name no other test uses."""
    return f"a{os.getpid()}x{next(_numbers)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Attach the logs of the servers a failed test used to its report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    server = funcargs.get("zk_server")
    if isinstance(server, ZooKeeperServer):
        report.sections.append(("ZooKeeper log (last lines)", server.log_tail(40)))
    for pool in open_pools():
        for title, text in pool.log_tails():
            report.sections.append((title, text))
