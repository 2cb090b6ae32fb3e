"""Checkpoints ordered and checked, with real processes (docs/DESIGN.md §6; issue 11 items 6 and 8).

- Item 6: an every-call checkpoint whose snapshot was taken first but whose
  sequence number would be drawn last must not replace the newer one: the
  node pauses right after a snapshot (test hook), a second call runs and is
  acknowledged meanwhile, then the node is killed.
- Item 8: a bit flipped in the stored checkpoint inside the storesite's LMDB
  file is never restored; a damaged store or a deleted data dir stops a
  storesite from starting, with one line saying why.
"""

from __future__ import annotations

import pathlib
import shutil
import signal
import threading
import time

import lmdb
import msgpack
import pytest
from faultkit import ClusterStarter, counter_cluster

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import CheckpointDamagedError, UnreachableError
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.roles import TEST_CERT_NAME
from hermesx.testing.clusters import part_log, wait_for_log
from hermesx.testing.wait import wait_until


def _store_dir(cluster: LocalCluster) -> pathlib.Path:
    return cluster.dir / "storesite-s1"


def _stop_storesite(cluster: LocalCluster) -> None:
    cluster.kill("storesite-s1", signal.SIGTERM)


def _restart_storesite(cluster: LocalCluster, client: Client) -> None:
    old = client.naming.storesites().get("s1")
    cluster.start_storesite("s1")

    def registered() -> bool:
        member = client.naming.storesites().get("s1")
        return member is not None and (old is None or member.address != old.address)

    wait_until(registered, 60.0, "the restarted storesite to register")


def _flip_a_bit_of_latest_checkpoint(
    cluster: LocalCluster, guid: str, number: int | None = None
) -> None:
    """Damage the latest checkpoint of ``guid`` (or slot ``number``) on disk: one bit
    inside its snapshot, or inside its delta when it is a delta record (storesite.chain).

    The storesite is stopped. Its record is found through LMDB (read only),
    then the bit is flipped with a plain write into ``data.mdb``, as a disk
    would do it: LMDB's own structure stays intact.
    """
    lmdb_dir = _store_dir(cluster) / "lmdb"
    env = lmdb.open(str(lmdb_dir), max_dbs=8, subdir=True, readonly=True, lock=False)
    try:
        atoms, checkpoints = (
            env.open_db(b"atoms", create=False),
            env.open_db(b"checkpoints", create=False),
        )
        with env.begin() as txn:
            state = msgpack.unpackb(txn.get(guid.encode(), db=atoms), raw=False)
            slot = int(state["ck_no"]) if number is None else number
            key = guid.encode() + b"/" + slot.to_bytes(8, "big")
            record = bytes(txn.get(key, db=checkpoints))
    finally:
        env.close()
    fields = msgpack.unpackb(record, raw=False)
    snapshot = fields[3] if len(fields) == 6 else fields[4]
    path = lmdb_dir / "data.mdb"
    data = bytearray(path.read_bytes())
    start = data.find(record)
    assert start >= 0, "the checkpoint record is not stored contiguously"
    flipped = 0
    while start >= 0:
        data[start + record.index(snapshot) + len(snapshot) // 2] ^= 0x04
        flipped += 1
        start = data.find(record, start + 1)
    path.write_bytes(bytes(data))
    assert flipped >= 1


def _damage(cluster: LocalCluster, client: Client, guid: str, number: int | None = None) -> None:
    """Stop the storesite, flip a bit of the latest checkpoint of ``guid`` (or slot
    ``number``) on disk, and start the storesite again."""
    _stop_storesite(cluster)
    _flip_a_bit_of_latest_checkpoint(cluster, guid, number)
    _restart_storesite(cluster, client)


def _damaged_after(
    cluster: LocalCluster, client: Client, calls: int, number: int | None = None
) -> str:
    """Counter ``c`` after ``calls`` increments, then damaged as :func:`_damage` does; its GUID."""
    for _ in range(calls):
        client.atom("c").incr(1)
    guid = client.guid_of("c")
    _damage(cluster, client, guid, number)
    return guid


def test_an_older_snapshot_never_replaces_a_newer_acknowledged_one(
    start_cluster: ClusterStarter, atoms: dict[str, pathlib.Path]
) -> None:
    cluster = start_cluster(["n1", "n2"])
    # The test certificate: it may also call the test hooks.
    with Client(cluster.zk, cluster.name, cert=TEST_CERT_NAME) as client:
        client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
        assert client.atom("c").incr(10) == 10
        # The next checkpoint on n1 stops for 2 s right after its snapshot.
        client.node_client.pause_at(client.node_member("n1"), "checkpoint-snapshot", 2.0)
        first: list[object] = []
        racing = threading.Thread(target=lambda: first.append(client.atom("c").incr(1)))
        racing.start()
        # The first call's checkpoint pauses after its snapshot.
        wait_for_log(cluster, "node-n1", "test hook: paused at checkpoint-snapshot", 60.0)
        # This call runs while the first one's snapshot (11) waits: it sees 12.
        assert client.atom("c").incr(1) == 12
        racing.join(timeout=30)
        assert first == [11]
        # Both were acknowledged; a crash now must keep both.
        cluster.kill("node-n1")
        assert codec.unpack(client.invoke("c", "get", codec.pack(None), timeout=60).result) == 12
        assert client.locate("c").node == "n2"


def test_a_flipped_bit_in_the_latest_acknowledged_checkpoint_is_never_restored(
    start_cluster: ClusterStarter, atoms: dict[str, pathlib.Path]
) -> None:
    with counter_cluster(start_cluster, atoms["counter"]) as (cluster, client):
        guid = _damaged_after(cluster, client, 12)
        # The node dies: the storesite must recover the atom from its checkpoint.
        cluster.kill("node-n1")
        started = time.monotonic()
        with pytest.raises(CheckpointDamagedError) as info:
            client.invoke("c", "get", codec.pack(None), timeout=30)
        # Damage is final: the call fails at once rather than retry to its deadline.
        assert time.monotonic() - started < 20
        message = str(info.value)
        assert f"checkpoint #13 of atom {guid}" in message and "is damaged" in message, message
        assert f"atom {guid} is not restored" in message, message
        # No node restored anything: never a wrong value, never an older one.
        assert (
            not client.invoker.node_stub("n2")
            .Locate(pb.LocateRequest(guid=guid), timeout=5)
            .active_here
        )
        assert f"checkpoint #13 of atom {guid}" in part_log(cluster, "storesite-s1")


def test_a_damaged_checkpoint_falls_back_to_an_equal_good_one(
    start_cluster: ClusterStarter, atoms: dict[str, pathlib.Path]
) -> None:
    cluster = start_cluster(["n1"])
    with Client(cluster.zk, cluster.name) as client:
        guid = client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
        for _ in range(12):
            client.atom("c").incr(1)
        # Passivation writes the same state once more as the latest checkpoint.
        client.passivate("c")
        _damage(cluster, client, guid)
        # Activation restores the previous checkpoint: it holds every acknowledged call.
        assert client.atom("c").incr(1) == 13
        log = part_log(cluster, "storesite-s1")
        assert f"checkpoint #14 of atom {guid}" in log and "is damaged" in log
        assert "restoring the previous good checkpoint" in log


def test_a_truncated_store_or_a_deleted_data_dir_stops_the_storesite_with_one_line(
    start_cluster: ClusterStarter, atoms: dict[str, pathlib.Path]
) -> None:
    cluster = start_cluster(["n1"])
    with Client(cluster.zk, cluster.name) as client:
        for i in range(20):
            client.create(atoms["counter"], name=f"c{i}", on="n1", checkpoint="every-call")
    data_file = _store_dir(cluster) / "lmdb" / "data.mdb"
    cluster.down()

    # Truncated: refused before LMDB maps it (it used to die of SIGBUS after "serving").
    size = data_file.stat().st_size
    with open(data_file, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(UnreachableError) as info:
        cluster.up([NodeSpec("n1")], zk=cluster.zk)
    assert (
        f"error: storesite s1: store {data_file} is damaged: it is {size // 2} bytes "
        f"but its pages run to {size} bytes (truncated); move it away and start with --init "
        "to create a new one"
    ) in str(info.value)
    log = part_log(cluster, "storesite-s1").splitlines()
    assert "serving" not in log[-1] and log[-1].startswith("error: storesite s1: store")

    # Deleted: `hermesx up` on this cluster's data never starts an empty storesite.
    shutil.rmtree(_store_dir(cluster))
    with pytest.raises(UnreachableError) as info:
        cluster.up([NodeSpec("n1")], zk=cluster.zk)
    assert (
        f"error: storesite s1: data dir {_store_dir(cluster)} does not exist; "
        "start with --init to create a new one"
    ) in str(info.value)
    assert not _store_dir(cluster).exists()

    # Asked for explicitly, a new store is made, and the cluster works.
    cluster.up([NodeSpec("n1")], zk=cluster.zk, init_stores=True)
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["counter"], name="again", on="n1", checkpoint="every-call")
        assert client.atom("again").incr(2) == 2


def test_a_delta_on_a_damaged_base_is_refused_and_the_whole_state_is_sent(
    start_cluster: ClusterStarter, atoms: dict[str, pathlib.Path]
) -> None:
    with counter_cluster(start_cluster, atoms["counter"]) as (cluster, client):
        guid = _damaged_after(cluster, client, 5)
        # n1 still holds the atom: its next checkpoint is a delta on the damaged one.
        assert client.atom("c").incr(1) == 6
        log = part_log(cluster, "storesite-s1")
        assert f"checkpoint delta of atom {guid}" in log and "is damaged" in log, log
        assert "send the whole state" in log
        cluster.kill("node-n1")
        # Recovered from the whole state n1 sent instead of the refused delta.
        assert client.atom("c").get() == 6
        assert client.locate("c").node == "n2"
