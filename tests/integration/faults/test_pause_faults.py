"""A node paused past its session timeout never serves again as the old copy (DESIGN.md §6).

Real processes: ZooKeeper, a storesite, nodes. A node is SIGSTOPped longer than
its ZooKeeper session timeout while a client keeps calling; the storesite
recovers the atom elsewhere. Calls sent to the stopped node itself sit in its
socket; when it resumes, its serving lease has run out, so it refuses them
instead of running them on its stale copy.

The node resumes into a partition from ZooKeeper (its link goes silent while
it is stopped), so kazoo needs its whole read timeout to notice anything: the
window in which a node without a lease served its queued calls is then
seconds long instead of milliseconds, and the test sees it every time.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time
from collections.abc import Callable

import grpc
import pytest
from faultkit import (
    ClusterStarter,
    LoadGenerator,
    Tally,
    TcpProxy,
    assert_nothing_lost,
    final_value,
    tally,
    wait_until,
)

from hermesx import codec
from hermesx.client import Client
from hermesx.proto import hermesx_pb2 as pb
from nameservice.zookeeper import ZooKeeperServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

Report = Callable[[Tally], None]
SESSION_S = 2.0


def test_node_paused_past_its_session_runs_none_of_the_calls_queued_meanwhile(
    start_cluster: ClusterStarter,
    zk_server: ZooKeeperServer,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    with TcpProxy(zk_server.connect_string) as zk_link:
        cluster = start_cluster(
            ["n1", "n2", "n3"],
            zk=zk_server.connect_string,
            session_timeout=SESSION_S,
            node_zk={"n2": zk_link.address},
        )
        with Client(cluster.zk, cluster.name) as client:
            client.create(atoms["counter"], name="c", on="n2", checkpoint="every-call")
            guid = client.guid_of("c")
            stale = client.node_stub("n2")
            pid = cluster.procs["node-n2"]
            load = LoadGenerator(client.address.zk, client.address.cluster, "c")
            queued: list[grpc.Future] = []
            try:
                with load:
                    load.wait_acks(20)
                    os.kill(pid, signal.SIGSTOP)
                    stopped_at = time.monotonic()
                    try:
                        zk_link.cut("blackhole")
                        # Calls straight to the stopped node: they wait in its socket.
                        for i in range(16):
                            request = pb.InvokeRequest(
                                guid=guid,
                                method="incr",
                                args=codec.pack(1),
                                request_id=f"queued-{i}",
                                hop_limit=1,
                                hops=1,
                                timeout=60.0,
                            )
                            queued.append(stale.Invoke.future(request, timeout=60.0))
                        wait_until(
                            "the atom to be recovered on another node",
                            lambda: client.locate("c").node != "n2",
                            timeout=30.0,
                        )
                        load.wait_acks(10, since=time.monotonic())
                        # Well past the session timeout: the old session is surely gone.
                        time.sleep(max(0.0, stopped_at + 2 * SESSION_S - time.monotonic()))
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    replies = [f.result(timeout=60.0) for f in queued]
                    zk_link.heal()
                    load.wait_acks(10, since=time.monotonic())
                final = final_value(client, "c")
                where = client.locate("c")
            finally:
                for f in queued:
                    f.cancel()
    t = tally("pause a node past its session timeout", load.records, final)
    t.notes.update(recovered_on=f"{where.node}@{where.age}")
    report(t)
    # None of the queued calls ran on the stale copy: each was refused as unreachable.
    ran = [r for r in replies if r.WhichOneof("outcome") == "result"]
    assert not ran, ran
    assert {r.error.kind for r in replies} == {"unreachable"}, replies
    # The atom's value on its new node is exactly the acknowledged calls.
    assert_nothing_lost(t)
    assert where.node in ("n1", "n3"), where
    text = (cluster.dir / "node-n2.log").read_text(errors="replace")
    assert "serving lease ran out" in text
    assert "call ran but checkpoint failed" not in text
