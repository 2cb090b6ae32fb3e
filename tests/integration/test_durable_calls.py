"""Durable calls with group commit and incremental checkpoints, real processes (docs/DESIGN.md §6).

* Every call acknowledged by twelve threads calling twelve every-call atoms is
  in the state recovered after the node is killed with SIGKILL, and none is
  counted twice; their checkpoints travel several atoms' to a request
  (``checkpoint-batch``: more than the eight requests a node keeps under way to a
  storesite), and the kill comes while such requests are under way.
* A read-only call writes no checkpoint (the storesite's count of written
  checkpoints does not move), yet a retry of its request id is answered
  from the reply table, also after a recovery once a later checkpoint
  carried the table; a read-only call whose entry was never written runs
  again on the recovered state, which it had not changed.
"""

from __future__ import annotations

import pathlib
import threading

import pytest

from hermesx.client import Client
from hermesx.core.errors import HermesError
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.storesite_client import StoresiteClient, StoresiteInfo
from hermesx.testing.metrics import metric_value, scrape

pytestmark = pytest.mark.integration


def _storesite(client: Client) -> StoresiteInfo:
    address = client.naming.storesites()["s1"].address
    with StoresiteClient(address, sid="s1", channels=client.channels) as site:
        return site.status()


def _batched(cluster: LocalCluster) -> float:
    """Checkpoints the storesite received in requests of several atoms' so far."""
    families = scrape(cluster, "storesite-s1")
    return metric_value(
        families, "hermesx_storesite_checkpoint_requests_total", transport="call-batch"
    )


def test_every_acknowledged_call_of_twelve_threads_survives_a_kill_9(
    cluster_factory: object, atoms: dict[str, pathlib.Path]
) -> None:
    cluster: LocalCluster = cluster_factory(2, session_timeout=2.0)  # type: ignore[operator]
    with Client(cluster.zk, cluster.name) as client:
        names = [f"d{i}" for i in range(12)]
        for name in names:
            client.create(atoms["counter"], name=name, on="n2", checkpoint="every-call")
        before = _storesite(client)
        batched = _batched(cluster)
        acknowledged = dict.fromkeys(names, 0)
        failed: dict[str, list[str]] = {name: [] for name in names}
        killed = threading.Event()
        stop = threading.Event()

        def calls(name: str) -> None:
            proxy = client.atom(name)
            # Until the kill, then a few more: these run on the recovered copy.
            after_kill = 0
            while not stop.is_set() and after_kill < 3:
                try:
                    value = proxy.incr(1)
                except HermesError as exc:
                    failed[name].append(str(exc))
                    return
                acknowledged[name] += 1
                assert value == acknowledged[name], (name, value, acknowledged[name])
                if killed.is_set():
                    after_kill += 1

        threads = [threading.Thread(target=calls, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        try:
            while min(acknowledged.values()) < 10 and not any(failed.values()):
                stop.wait(0.05)
            middle = _storesite(client)
            batched_before_kill = _batched(cluster)
            cluster.kill("node-n2")
            killed.set()
        finally:
            for thread in threads:
                thread.join(120)
            stop.set()
        assert not any(failed.values()), failed
        for name in names:
            where = client.locate(name)
            assert where.node == "n1" and where.age > 1
            assert client.atom(name).get() == acknowledged[name]
        # Every acknowledged call before the kill was written by the storesite.
        assert middle.checkpoints_written - before.checkpoints_written >= len(names) * 10
        # Several atoms' checkpoints went in one request before the kill.
        assert batched_before_kill > batched


def test_a_read_only_call_writes_no_checkpoint_and_its_retry_gets_the_first_reply(
    cluster_factory: object, atoms: dict[str, pathlib.Path]
) -> None:
    cluster: LocalCluster = cluster_factory(2, session_timeout=2.0)  # type: ignore[operator]
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["counter"], name="ro", on="n2", checkpoint="every-call")
        assert client.atom("ro").incr(1) == 1
        # A call leaves its method and arguments in the atom's memory: the first
        # get after an incr changed that much, the next ones nothing.
        assert client.atom("ro").get() == 1
        written = _storesite(client).checkpoints_written
        assert client.atom("ro", request_id="read-1").get() == 1
        assert client.atom("ro").get() == 1
        assert _storesite(client).checkpoints_written == written
        # A retry of the read-only call is answered from the reply table.
        assert client.atom("ro", request_id="read-1").get() == 1
        # The next change writes a checkpoint, which carries the table too.
        assert client.atom("ro").incr(1) == 2
        assert _storesite(client).checkpoints_written > written
        assert client.atom("ro", request_id="read-1").get() == 1  # not run again: 2 by now
        assert client.atom("ro").get() == 2
        assert client.atom("ro", request_id="read-2").get() == 2  # read-only: not written
        cluster.kill("node-n2")
        # Recovered from the incr's checkpoint: read-1's first reply came with it.
        assert client.atom("ro", request_id="read-1").get() == 1
        # read-2's entry was never written: it runs again on the state it did not change.
        assert client.atom("ro", request_id="read-2").get() == 2
        assert client.locate("ro").node == "n1"
