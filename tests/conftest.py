"""Shared fixtures: one real ZooKeeper for the whole run, one cluster name per test.

Like kazoo's own harness, the session starts a single ZooKeeper server
(cheap: ~0.5 s, ~55 MiB) and isolates tests by giving each its own cluster
name, i.e. its own root ``/hermesx/<cluster>``. When a test that used the
server fails, the server's last log lines are attached to its report.
Fixtures for hermesx clusters live in tests/integration/conftest.py.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from nameservice import NameService
from nameservice.zookeeper import ZooKeeperServer, open_shared_root

_cluster_numbers = itertools.count(1)


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
    return f"{base or 'test'}-{next(_cluster_numbers)}"


@pytest.fixture
def nameservice(zk_server: ZooKeeperServer, cluster_name: str) -> Iterator[NameService]:
    """A started NameService on this test's cluster, closed afterwards."""
    service = NameService(zk_server.connect_string, cluster_name)
    service.start()
    try:
        yield service
    finally:
        service.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and "zk_server" in getattr(item, "fixturenames", ()):
        server = item.funcargs.get("zk_server") if hasattr(item, "funcargs") else None
        if isinstance(server, ZooKeeperServer):
            report.sections.append(("ZooKeeper log (last lines)", server.log_tail(40)))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", action="store_true", default=False, help="run the long fault soak (minutes)"
    )
