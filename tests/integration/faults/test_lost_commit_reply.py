"""Writes the storesite made but whose answers never reached the node (docs/DESIGN.md §5, §6).

The storesite is reached through a TCP proxy (its advertised address) that
delays every byte 6 s each way from a chosen moment: a request arrives and
is written at 6 s, its answer would arrive at 12 s, after the node's 10 s
deadline. The node took both of these writes as failed and served its copy
again while the storesite's record said otherwise:

- a move's COMMIT: the record named the destination, which settled its staged
  copy from the record and served (or, once it died, the atom was recovered
  from the record): two copies, for good;
- a passivation's final checkpoint: the record said dormant, and the next
  caller that asked the storesite had the atom activated on another node:
  two copies, each counting on;
- a COMMIT whose outcome was unknown when the source lost its session: the
  source had the destination discard the copy the record named (found nowhere).
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import threading
from collections.abc import Iterator

import pytest
from faultkit import TcpProxy

from hermesx.client import Client
from hermesx.core.errors import HermesError
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.roles import TEST_CERT_NAME
from hermesx.testing.clusters import part_log, wait_for_log
from hermesx.testing.moves import active_copies, move_in_background
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.wait import wait_until

DELAY_S = 6.0  # each way: a request is written, its answer comes after the node's 10 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def slowed(cluster_factory: ClusterFactory) -> Iterator[tuple[LocalCluster, TcpProxy]]:
    """Nodes n1, n2, n3 and storesite s1, which peers reach through a proxy."""
    cluster = cluster_factory(["n1", "n2", "n3"], session_timeout=2.0, storesites=())
    port = _free_port()
    with Client(cluster.zk, cluster.name) as client, TcpProxy(f"127.0.0.1:{port}") as proxy:
        cluster.start_storesite(
            "s1", init=True, listen=f"127.0.0.1:{port}", advertise=proxy.address
        )

        def behind() -> bool:
            member = client.naming.storesites().get("s1")
            return member is not None and member.address == proxy.address

        wait_until(behind, 60.0, "storesite s1 to register behind the proxy")
        yield cluster, proxy


@pytest.fixture
def tester(slowed: tuple[LocalCluster, TcpProxy]) -> Iterator[Client]:
    cluster, proxy = slowed
    with Client(cluster.zk, cluster.name, cert=TEST_CERT_NAME) as client:
        yield client
    proxy.delay = 0.0


def test_a_commit_written_but_not_answered_leaves_one_copy_where_the_record_says(
    slowed: tuple[LocalCluster, TcpProxy], tester: Client, atoms: dict[str, pathlib.Path]
) -> None:
    cluster, proxy = slowed
    guid = tester.create(atoms["counter"], name="moved", on="n1", checkpoint="on-request")
    for _ in range(3):
        tester.atom("moved").incr(1)
    tester.node_client.pause_at(tester.node_member("n1"), "transferred", 1.0)
    mover, outcome = move_in_background(tester, "moved", "n2")
    wait_for_log(cluster, "node-n1", "paused at transferred")
    proxy.delay = DELAY_S  # from the COMMIT on
    wait_for_log(cluster, "storesite-s1", f"committed move of {guid}")
    # While its outcome is not known the atom is held: a second move is refused in a line.
    with pytest.raises(HermesError, match="not active on node n1") as second:
        tester.node_client.migrate(tester.node_member("n1"), guid, "n3", timeout=10.0)
    assert "\n" not in str(second.value)
    proxy.delay = 0.0
    mover.join(90)
    assert outcome == ["moved"], outcome
    with Client(cluster.zk, cluster.name) as fresh:
        recorded = fresh.locate("moved").node
        assert recorded == "n2"
        # One copy, where the record (and so every caller that asks) says.
        assert active_copies(fresh, guid) == [recorded]
        assert fresh.atom("moved").incr(1) == 4
    assert tester.atom("moved").incr(1) == 5  # its stash named n1: forwarded
    cluster.kill("node-n2")
    wait_until(
        lambda: active_copies(tester, guid) not in ([], ["n2"]),
        60.0,
        "the atom to be recovered from its record",
    )
    assert len(active_copies(tester, guid)) == 1, active_copies(tester, guid)


def test_a_passivation_written_but_not_answered_leaves_one_copy(
    slowed: tuple[LocalCluster, TcpProxy], tester: Client, atoms: dict[str, pathlib.Path]
) -> None:
    cluster, proxy = slowed
    node = next(n for n in ("n1", "n3") if n in tester.nodes())
    guid = tester.create(atoms["counter"], name="slept", on=node, checkpoint="on-request")
    for _ in range(3):
        tester.atom("slept").incr(1)
    tester.checkpoint("slept")  # the node's connection to the storesite, opened undelayed
    failed: list[HermesError] = []

    def passivate() -> None:
        try:
            tester.node_client.passivate(tester.node_member(node), guid)
        except HermesError as exc:
            failed.append(exc)

    proxy.delay = DELAY_S
    passivating = threading.Thread(target=passivate)
    passivating.start()
    wait_for_log(cluster, "storesite-s1", f"atom {guid} is dormant")
    proxy.delay = 0.0
    passivating.join(60)
    # The final checkpoint was written: the copy on the node must not serve on.
    wait_until(
        lambda: active_copies(tester, guid) == [],
        30.0,
        f"the copy on {node} to go, the storesite holding the atom dormant",
    )
    with Client(cluster.zk, cluster.name) as fresh:
        assert fresh.atom("slept").incr(1) == 4
        assert tester.atom("slept").incr(1) == 5
        assert len(active_copies(fresh, guid)) == 1


def test_a_commit_in_doubt_when_the_source_lost_its_session_leaves_the_copy_the_record_names(
    slowed: tuple[LocalCluster, TcpProxy], tester: Client, atoms: dict[str, pathlib.Path]
) -> None:
    # The COMMIT is written and its answer lost; meanwhile the source loses its
    # session (SIGSTOP past the 2 s session) and drops the atom, its outcome unknown.
    # The record names the destination: its staged copy is the atom. The source told
    # it to discard that copy, and the atom was found nowhere for good; it must leave
    # the copy for the destination to settle from the record.
    cluster, proxy = slowed
    guid = tester.create(atoms["counter"], name="doubted", on="n1", checkpoint="on-request")
    for _ in range(3):
        tester.atom("doubted").incr(1)

    def count(part: str, text: str) -> int:
        return part_log(cluster, part).count(text)

    paused = count("node-n1", "paused at transferred")
    fenced = count("node-n1", "node n1 fenced")
    tester.node_client.pause_at(tester.node_member("n1"), "transferred", 1.0)
    # The destination settles its staged copy itself, from the record, only later.
    tester.node_client.pause_at(tester.node_member("n3"), "resolve-staged", 15.0)
    mover, outcome = move_in_background(tester, "doubted", "n3")
    wait_until(lambda: count("node-n1", "paused at transferred") > paused, 30.0, "the pause")
    proxy.delay = DELAY_S  # from the COMMIT on
    wait_for_log(cluster, "storesite-s1", f"committed move of {guid}")
    pid = cluster.procs["node-n1"]
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "n1" not in tester.nodes(), 30.0, "n1's session to expire")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: count("node-n1", "node n1 fenced") > fenced, 30.0, "n1 to be fenced")
    mover.join(90)
    proxy.delay = 0.0
    assert outcome and outcome[0].startswith("failed"), outcome
    with Client(cluster.zk, cluster.name) as fresh:
        wait_until(lambda: active_copies(fresh, guid) == ["n3"], 60.0, "the copy the record names")
        assert fresh.atom("doubted").incr(1) == 4
