"""A 3-server ZooKeeper ensemble: the name service survives one loss and fails cleanly at two."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from nameservice import NameService, NoQuorumError, ZooKeeperEnsemble

pytestmark = pytest.mark.integration

GUID = "s1:" + "e" * 32


@pytest.fixture(scope="module")
def ensemble() -> Iterator[ZooKeeperEnsemble]:
    servers = ZooKeeperEnsemble(3)
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


def test_lookups_keep_working_with_one_server_down(ensemble: ZooKeeperEnsemble) -> None:
    assert ensemble.connect_string.count(",") == 2
    with NameService(ensemble.connect_string, "one-down", timeout=10.0) as service:
        service.bind("survivor", GUID)
        service.alias_add("team", "lead", GUID)
        ensemble.kill(0)
        try:
            # A fresh client must not depend on the dead server either.
            with NameService(ensemble.connect_string, "one-down", timeout=10.0) as fresh:
                assert fresh.resolve("survivor") == GUID
                assert fresh.lookup("le.*", scope="team", all=True) == [GUID]
                fresh.bind("after-loss", GUID)
            assert service.lookup_names("after-.*", all=True) == [("after-loss", GUID)]
            assert service.resolve("survivor") == GUID
        finally:
            ensemble.restart(0)


def test_without_quorum_calls_fail_with_no_quorum_in_time(ensemble: ZooKeeperEnsemble) -> None:
    with NameService(ensemble.connect_string, "no-quorum", timeout=2.0) as service:
        service.bind("before", GUID)
        ensemble.kill(1)
        ensemble.kill(2)
        try:
            started = time.monotonic()
            with pytest.raises(NoQuorumError, match="did not answer within 2s"):
                service.bind("during", GUID)
            assert time.monotonic() - started < 2.0 + 3.0
            with pytest.raises(NoQuorumError):
                service.lookup("never-.*", scope="x", all=True)
        finally:
            ensemble.restart(1)
            ensemble.restart(2)
