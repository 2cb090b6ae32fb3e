"""Name-service faults under load (docs/DESIGN.md §6, §7).

Scenario 3: kill -9 of one member (the leader) of a 3-server ZooKeeper
ensemble: the cluster keeps working. Scenario 4: a node cut off from
ZooKeeper while clients still reach it must fence itself before the
storesite recovers its atom elsewhere, so two copies never serve.

The cut of scenario 4 is a userspace TCP proxy between that node and
ZooKeeper (``faultkit.TcpProxy``) in ``blackhole`` mode: connections stay
open and every byte is dropped, which is what a partition looks like to
both ends; it cuts exactly one process's name-service traffic and nothing
else. ``test_netns_faults.py`` makes the same cut in the kernel, with
nftables inside a network namespace the test creates.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator

import pytest
from faultkit import (
    ClusterStarter,
    CopyWatcher,
    LoadGenerator,
    Report,
    assert_nothing_lost,
    counter_behind_zk_link,
    fencing,
    final_value,
    serves_here,
    tally,
)

from hermesx.client import Client
from nameservice.zookeeper import ZooKeeperEnsemble, ZooKeeperServer, four_letter, open_shared_root


@pytest.fixture(scope="module")
def ensemble() -> Iterator[ZooKeeperEnsemble]:
    servers = ZooKeeperEnsemble(3)
    servers.start()
    try:
        # Each test's cluster has a secret of its own: /hermesx must be open to all.
        open_shared_root(servers.connect_string)
        yield servers
    finally:
        servers.stop()


def _leader(ensemble: ZooKeeperEnsemble) -> int:
    ports = [int(hp.rpartition(":")[2]) for hp in ensemble.connect_string.split(",")]
    for i, port in enumerate(ports):
        if "Mode: leader" in four_letter(port, "srvr"):
            return i
    raise AssertionError("no ZooKeeper server says it leads")


def test_kill_one_zookeeper_member(
    start_cluster: ClusterStarter,
    ensemble: ZooKeeperEnsemble,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    cluster = start_cluster(["n1", "n2"], zk=ensemble.connect_string, session_timeout=4.0)
    leader = _leader(ensemble)
    try:
        with Client(cluster.zk, cluster.name) as client:
            client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
            load = LoadGenerator(client.address.zk, client.address.cluster, "c")
            with load:
                load.wait_acks(30)
                ensemble.kill(leader)
                killed_at = time.monotonic()
                load.wait_acks(30, since=killed_at)
                # Names and membership still work: create, bind and call a new atom.
                client.create(atoms["counter"], name="born-after", on="n2")
                assert client.atom("born-after").incr(2) == 2
                load.wait_acks(10, since=time.monotonic())
            final = final_value(client, "c")
            where = client.locate("c")
    finally:
        ensemble.restart(leader)
    records = load.records
    t = tally("3 kill -9 ZooKeeper leader", records, final)
    t.notes.update(killed_member=leader, located=f"{where.node}@{where.age}")
    report(t)
    assert_nothing_lost(t)
    # Losing one of three servers is not an outage: no call failed, the atom stayed put.
    assert t.failed_clear == 0, t
    assert where.node == "n1" and where.age == 1, where


def test_quorum_lost_longer_than_the_session_timeout(
    start_cluster: ClusterStarter,
    ensemble: ZooKeeperEnsemble,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    """Two of three ZooKeeper servers down for longer than a session lasts, then one back.

    Without a quorum no session can expire, so when the quorum returns every
    node still holds its session: the storesite recovers nothing, and the
    atom must still be served by the node that had it.
    """
    session_timeout = 2.0
    cluster = start_cluster(
        ["n1", "n2"], zk=ensemble.connect_string, session_timeout=session_timeout
    )
    down = [i for i in range(3) if i != _leader(ensemble)]
    failure = ""
    try:
        with Client(cluster.zk, cluster.name) as client:
            client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
            load = LoadGenerator(
                client.address.zk, client.address.cluster, "c", threads=2, call_timeout=10.0
            )
            with load:
                load.wait_acks(20)
                for i in down:
                    ensemble.kill(i)
                time.sleep(2 * session_timeout + 1.0)  # the outage, longer than a session
                ensemble.restart(down[0])
                back_at = time.monotonic()
                try:
                    load.wait_acks(20, since=back_at, timeout=30.0)
                except AssertionError as exc:
                    failure = str(exc)
            final = None if failure else final_value(client, "c", timeout=10.0)
            where = client.locate("c")
    finally:
        for i in down:
            ensemble.restart(i)
    records = load.records
    t = tally("3b ZooKeeper quorum lost > session", records, final)
    t.notes.update(located=f"{where.node}@{where.age}", failure=failure)
    report(t)
    assert not failure, f"calls did not recover after the quorum came back: {failure}"
    assert_nothing_lost(t)
    assert all(r.ok for r in records if r.started >= back_at + 10.0), t.errors_by_kind


def test_node_partitioned_from_zookeeper_fences_before_recovery(
    start_cluster: ClusterStarter,
    zk_server: ZooKeeperServer,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    link = counter_behind_zk_link(start_cluster, atoms["counter"], zk_server.connect_string, "n1")
    with link as (cluster, zk_link, client):
        guid = client.guid_of("c")
        addresses = {name: m.address for name, m in client.nodes().items()}
        load = LoadGenerator(client.address.zk, client.address.cluster, "c")
        with load, CopyWatcher(addresses, guid, cluster=cluster.name) as watcher:
            load.wait_acks(30)
            zk_link.cut("blackhole")
            cut_at = time.monotonic()
            load.wait_recovered_elsewhere("n1")
            # n1 is still up and reachable by clients (it answers), yet does not serve.
            assert serves_here(watcher.stubs["n1"], guid) is False
        final = final_value(client, "c")
        where = client.locate("c")
        zk_link.heal()
        healed_at = time.monotonic()
        # Back in the name service, n1 registers again and holds no copy.
        cluster.wait_registered(nodes=["n1"])
        n1_watch = CopyWatcher({"n1": addresses["n1"]}, guid, cluster=cluster.name)
        n1_after_heal = n1_watch.probe_once()
        n1_watch.close()
        assert final_value(client, "c") == final
    records = load.records
    t = tally("4 node cut from ZooKeeper", records, final)
    fenced = fencing(records, "n1", cut_at, where, watcher)
    t.notes.update(fenced.notes, rejoined_after_heal_s=round(time.monotonic() - healed_at, 2))
    report(t)
    assert_nothing_lost(t)
    assert where.node in ("n2", "n3") and where.age > 1, where
    # At no moment did two copies serve ...
    assert watcher.rounds, "the copy watcher never completed a round"
    assert watcher.most_serving() <= 1, [r for r in watcher.rounds if len(r.serving) > 1][:3]
    # ... and no call was answered (or even run) by the old copy once the recovered one answered.
    assert fenced.old_started_before_first_new_answer
    assert not fenced.ran_late_on_old, fenced.ran_late_on_old[:3]
    assert n1_after_heal.active == () and n1_after_heal.serving == (), n1_after_heal
