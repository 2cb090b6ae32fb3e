"""A node paused past its session timeout never serves again as the old copy (docs/DESIGN.md §6).

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
from faultkit import (
    ClusterStarter,
    LoadGenerator,
    Report,
    assert_nothing_lost,
    counter_behind_zk_link,
    final_value,
    serves_here,
    tally,
)

from hermesx.client import Client
from hermesx.core import codec
from hermesx.node.migration_destination import STAGED_RESOLVE_AFTER_S
from hermesx.rpc.node_client import STAGE_TIMEOUT_S
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.roles import TEST_CERT_NAME
from hermesx.rpc.wire import CHANNEL_OPTIONS, open_channel
from hermesx.testing.wait import wait_until
from nameservice.zookeeper import ZooKeeperServer

SESSION_S = 2.0


def test_node_paused_past_its_session_runs_none_of_the_calls_queued_meanwhile(
    start_cluster: ClusterStarter,
    zk_server: ZooKeeperServer,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    zk = zk_server.connect_string
    link = counter_behind_zk_link(start_cluster, atoms["counter"], zk, "n2", SESSION_S)
    with link as (cluster, zk_link, client):
        guid = client.guid_of("c")
        # The queued calls wait in the stopped n2's socket for as long as the
        # load's own stuck calls take to time out (~30 s); a keepalive on
        # their channel would end them at about the same moment, racing
        # n2's waking. Their channel has none: what n2 answers is the point.
        quiet = [(k, v) for k, v in CHANNEL_OPTIONS if "keepalive" not in k]
        channel = open_channel(client.invoker.node_address("n2"), quiet, client.identity)
        stale = pbg.SupervisorStub(channel)
        grpc.channel_ready_future(channel).result(timeout=30)  # connected before n2 stops
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
                        lambda: client.locate("c").node != "n2",
                        30.0,
                        "the atom to be recovered on another node",
                    )
                    load.wait_acks(10, since=time.monotonic())
                    # A deliberate pause window, well past the session timeout:
                    # the old session is surely gone when n2 wakes.
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
            channel.close()
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


def _log_has(path: pathlib.Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


def _dormant_counter_ranked_on_n2(client: Client, atoms: dict[str, pathlib.Path]) -> int:
    """Make "c" a dormant durable counter whose next activation tries n2 first; its value."""
    client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
    acked = 0
    for _ in range(5):
        client.atom("c").incr(1)
        acked += 1
    # n2 is the least loaded node, so the storesite places dormant atoms there first.
    for node in ("n1", "n3"):
        for i in range(3):
            client.create(atoms["counter"], name=f"fill-{node}-{i}", on=node)
    client.create(atoms["counter"], name="warm", on="n1")
    client.passivate("warm")
    client.passivate("c")
    # Activating "warm" on n2 leaves every node's load in the storesite's
    # cache (1 s): the next placement ranks n2 first without asking it.
    assert client.locate("warm").node == "n2"
    return acked


def _watch_n2_settle(
    client: Client, stubs: dict[str, pbg.SupervisorStub], guid: str, until: Callable[[], bool]
) -> int:
    """Call c (via the client) and sample whether n2 serves it until ``until()``; calls acked."""
    deadline = time.monotonic() + 30.0
    acked = 0
    while not until():
        assert time.monotonic() < deadline, "n2 did not settle its late activation"
        assert serves_here(stubs["n2"], guid) is not True, "n2 serves a second copy"
        client.atom("c").incr(1)
        acked += 1
        time.sleep(0.2)  # load pacing: one sampled call every 0.2 s until the condition
    return acked


def test_node_paused_while_activating_never_serves_the_atom(
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
) -> None:
    # A session long enough that the paused node stays a live member: the
    # storesite gives up on its activation by timing out, not by its expiry.
    session = 8.0
    cluster = start_cluster(["n1", "n2", "n3"], session_timeout=session)
    with Client(cluster.zk, cluster.name) as client:
        acked = _dormant_counter_ranked_on_n2(client, atoms)
        guid = client.guid_of("c")
        stubs = {n: client.invoker.node_stub(n) for n in ("n1", "n2", "n3")}
        pid = cluster.procs["node-n2"]
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            client.atom("c").incr(1)  # activates c while n2 sleeps
            acked += 1
            activation_s = time.monotonic() - started
            where = client.locate("c")
            storesite_log = cluster.dir / "storesite-s1.log"
            assert _log_has(storesite_log, "did not stage atom"), "n2 was not tried first"
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        assert where.node != "n2" and activation_s < session, (where, activation_s)
        # n2 now sees the activation it was sent while stopped (or gRPC drops
        # it, its deadline gone): whatever it does, it never serves c.
        acked += _watch_n2_settle(
            client, stubs, guid, lambda: time.monotonic() > resumed + STAGED_RESOLVE_AFTER_S + 2
        )
        assert not _log_has(cluster.dir / "node-n2.log", f"atom {guid} active here")
        # Exactly one copy answers, and it holds every acknowledged call.
        answering = [n for n, stub in stubs.items() if serves_here(stub, guid)]
        assert answering == [where.node], answering
        assert final_value(client, "c") == acked


def test_an_activation_the_node_finishes_after_the_storesite_gave_up_never_serves(
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
) -> None:
    cluster = start_cluster(["n1", "n2", "n3"], session_timeout=4.0)
    with Client(cluster.zk, cluster.name, cert=TEST_CERT_NAME) as client:
        acked = _dormant_counter_ranked_on_n2(client, atoms)
        guid = client.guid_of("c")
        stubs = {n: client.invoker.node_stub(n) for n in ("n1", "n2", "n3")}
        # n2's restore takes longer than the storesite waits: it stages the copy late.
        late = STAGE_TIMEOUT_S + 2.0
        client.node_client.pause_at(client.node_member("n2"), "activate-stage", late)
        client.atom("c").incr(1)  # the storesite gives up on n2 and activates c elsewhere
        acked += 1
        where = client.locate("c")
        assert where.node != "n2", where
        node_log = cluster.dir / "node-n2.log"
        acked += _watch_n2_settle(
            client, stubs, guid, lambda: _log_has(node_log, "dropped a staged copy")
        )
        text = node_log.read_text(errors="replace")
        assert f"atom {guid} staged here at n2@" in text  # the late activation did arrive
        assert f"atom {guid} active here" not in text
        answering = [n for n, stub in stubs.items() if serves_here(stub, guid)]
        assert answering == [where.node], answering
        assert final_value(client, "c") == acked


def test_a_call_stuck_in_a_frozen_node_goes_on_elsewhere_once_the_node_is_gone(
    start_cluster: ClusterStarter, atoms: dict[str, pathlib.Path]
) -> None:
    """A frozen node holds a call it received until the caller gives up. Once the
    node's session has expired (it is fenced), the caller ends its wait, and the
    call runs on the recovered copy within its deadline, once."""
    cluster = start_cluster(["n1", "n2", "n3"], session_timeout=SESSION_S)
    with Client(cluster.zk, cluster.name, timeout=20.0) as client:
        client.create(atoms["counter"], name="c", on="n2", checkpoint="every-call")
        assert client.atom("c").incr(5) == 5  # the channel to n2 is open
        pid = cluster.procs["node-n2"]
        os.kill(pid, signal.SIGSTOP)
        try:
            # Sent into n2's socket: n2 holds it, unanswered, until its session ends.
            outcome = client.invoke("c", "incr", codec.pack(1), trace=True)
            assert codec.unpack(outcome.result) == 6
            assert client.locate("c").node != "n2"
            # The caller let go of n2 because n2 left the cluster, not at its deadline.
            broken = [h for h in outcome.trace if h.node == "n2" and h.event == "broken"]
            assert broken and "left the cluster" in broken[0].detail, outcome.trace
        finally:
            os.kill(pid, signal.SIGCONT)
        # n2 wakes fenced: the call it held never runs there as well.
        assert client.atom("c").get() == 6
