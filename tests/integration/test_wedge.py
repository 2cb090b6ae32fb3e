"""Deadlines are absolute (issue 11 items 1 and 10): wedged atoms, reentrant callbacks, wait cycles.

Real node and storesite processes on a real ZooKeeper; the test atom is
tests/unit/wat/wedge.wat (``block`` waits in ``recv(-1)``).
"""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import wasmtime

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import (
    CapacityError,
    DeadlineExceededError,
    HermesError,
    MethodError,
)
from hermesx.local.cluster import LocalCluster, NodeSpec, alive
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration

WEDGE = wasmtime.wat2wasm(
    (pathlib.Path(__file__).parents[1] / "unit" / "wat" / "wedge.wat").read_text()
)
NIL = codec.pack(None)


@pytest.fixture(scope="module")
def cluster(cluster_factory: object) -> LocalCluster:
    return cluster_factory(3, session_timeout=2.0)  # type: ignore[operator, no-any-return]


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.zk, cluster.name) as c:
        yield c


def test_seventy_calls_blocked_in_recv_do_not_wedge_the_node(
    client: Client, unique_name: str
) -> None:
    wedged = client.create(WEDGE, name=f"{unique_name}-w", on="n1", checkpoint="on-request")
    other = client.create(WEDGE, name=f"{unique_name}-o", on="n1", checkpoint="on-request")
    deadline_s = 4.0

    def block() -> tuple[HermesError | None, float]:
        started = time.monotonic()
        try:
            client.invoke(wedged, "block", NIL, timeout=deadline_s)
        except HermesError as exc:
            return exc, time.monotonic() - started
        return None, time.monotonic() - started

    pool = ThreadPoolExecutor(70)
    started = time.monotonic()
    try:
        calls = [pool.submit(block) for _ in range(70)]
        wait_until(
            lambda: client.node_status("n1").atom_calls >= 8,
            deadline_s,
            "the node to hold the wedged calls",
        )
        # The node still answers another atom, and its Status, within 1 s.
        t = time.monotonic()
        assert codec.unpack(client.invoke(other, "ping", NIL, timeout=5.0).result) == 1
        other_s = time.monotonic() - t
        t = time.monotonic()
        status = client.node_status("n1", timeout=5.0)
        status_s = time.monotonic() - t
        assert other_s < 1.0, f"another atom answered in {other_s:.2f} s"
        assert status_s < 1.0 and status.active_atoms >= 2
        # A move asked for now waits for the wedged calls to end at their deadline.
        move = pool.submit(client.migrate, wedged, "n2")
        outcomes = [c.result(timeout=deadline_s + 10) for c in calls]
        moved_at = time.monotonic()
        move.result(timeout=30)
        move_s = time.monotonic() - moved_at
    finally:
        pool.shutdown(wait=True)
    kinds = sorted({type(e).__name__ for e, _ in outcomes})
    assert all(e is not None for e, _ in outcomes)
    # Every call ends with a clear reason, before the caller's own deadline.
    assert set(kinds) <= {"DeadlineExceededError", "CapacityError"}, kinds
    refused = [e for e, _ in outcomes if isinstance(e, CapacityError)]
    ran = [e for e, _ in outcomes if isinstance(e, DeadlineExceededError)]
    # One atom takes at most its share of the node's workers; the rest are told at once.
    assert len(refused) >= 70 - 16, kinds
    assert all("calls waiting or running" in str(e) for e in refused)
    # Calls that held the atom were stopped in recv(-1); those queued behind them were told so.
    assert any("was still waiting in recv(-1) at its call's deadline" in str(e) for e in ran)
    assert all(
        "waited past its deadline for its turn" in str(e) for e in ran if "recv" not in str(e)
    )
    assert all(took < deadline_s + 3 for _, took in outcomes)
    # Unfixed after the deadline: it moved, and it answers from its new node.
    assert client.locate(wedged).node == "n2"
    assert codec.unpack(client.invoke(wedged, "ping", NIL).result) == 1
    print(
        f"70 recv(-1) calls: {len(refused)} refused at once, other atom {other_s * 1000:.0f} ms, "
        f"Status {status_s * 1000:.0f} ms, move done {move_s:.2f} s after the last call ended, "
        f"all ended {moved_at - started:.1f} s after the start"
    )


def test_calls_forwarded_to_a_wedged_atom_take_only_its_share_of_the_node(
    client: Client, unique_name: str
) -> None:
    wedged = client.create(WEDGE, name=f"{unique_name}-w", on="n1", checkpoint="on-request")
    other = client.create(WEDGE, name=f"{unique_name}-o", on="n1", checkpoint="on-request")
    client.migrate(wedged, "n2")  # n1 keeps a forwarding TAD

    def block() -> HermesError | None:
        try:
            client.invoke(wedged, "block", NIL, via="n1", timeout=3.0)
        except HermesError as exc:
            return exc
        return None

    with ThreadPoolExecutor(40) as pool:
        calls = [pool.submit(block) for _ in range(40)]
        wait_until(
            lambda: client.node_status("n2").atom_calls >= 8, 3.0, "n2 to hold the wedged calls"
        )
        t = time.monotonic()
        assert codec.unpack(client.invoke(other, "ping", NIL, timeout=5.0).result) == 1
        other_s = time.monotonic() - t
        outcomes = [c.result(timeout=20) for c in calls]
    assert other_s < 1.0, f"another atom of the forwarding node answered in {other_s:.2f} s"
    assert all(isinstance(e, DeadlineExceededError | CapacityError) for e in outcomes), outcomes
    assert any("already forwarding" in str(e) for e in outcomes)


def test_a_tenant_of_slow_atoms_does_not_starve_the_others(
    client: Client, unique_name: str
) -> None:
    slow = [
        client.create(WEDGE, name=f"{unique_name}-s{i}", on="n1", checkpoint="on-request")
        for i in range(4)
    ]
    other = client.create(WEDGE, name=f"{unique_name}-o", on="n1", checkpoint="on-request")

    def block(guid: str) -> HermesError | None:
        try:
            client.invoke(guid, "block", NIL, timeout=4.0)
        except HermesError as exc:
            return exc
        return None

    with ThreadPoolExecutor(80) as pool:
        calls = [pool.submit(block, slow[i % 4]) for i in range(80)]
        # 4 x 16 calls would take every worker but the reserve; under pressure
        # the node stops adding calls to atoms that already have some.
        wait_until(
            lambda: client.node_status("n1").atom_calls >= 40, 4.0, "the node to be under pressure"
        )
        t = time.monotonic()
        assert codec.unpack(client.invoke(other, "ping", NIL, timeout=5.0).result) == 1
        other_s = time.monotonic() - t
        outcomes = [c.result(timeout=20) for c in calls]
    assert other_s < 1.0, f"another atom answered in {other_s:.2f} s"
    unclear = [e for e in outcomes if not isinstance(e, DeadlineExceededError | CapacityError)]
    assert not unclear, unclear
    assert any("while the node is busy" in str(e) for e in outcomes)
    print(f"4 slow atoms x 20 calls: another atom answered in {other_s * 1000:.0f} ms")


def test_a_reentrant_every_call_atom_takes_a_callback_and_keeps_it_durable(
    cluster: LocalCluster, client: Client, unique_name: str
) -> None:
    outer = client.create(WEDGE, name=f"{unique_name}-r", on="n3", reentrant=True)
    relay = client.create(WEDGE, name=f"{unique_name}-b", on="n2")
    started = time.monotonic()
    # outer.bounce -> relay.relay -> outer.ping: a callback into the outer atom,
    # whose every-call checkpoint used to wait for the outer call to end.
    assert codec.unpack(client.invoke(outer, "bounce", codec.pack([relay, outer])).result) == 1
    assert time.monotonic() - started < 5.0
    # Durable: the node dies; the atom comes back from its checkpoint with the callback's effect.
    cluster.kill("node-n3")
    try:
        assert codec.unpack(client.invoke(outer, "ping", NIL).result) == 2
        assert client.locate(outer).node in ("n1", "n2")
    finally:
        cluster.start_node(NodeSpec("n3"))
        cluster.wait_registered(nodes=["n3"])


def test_two_chains_waiting_on_each_other_fail_fast_with_a_clear_error(
    client: Client, unique_name: str
) -> None:
    first = client.create(WEDGE, name=f"{unique_name}-a", on="n1", checkpoint="on-request")
    second = client.create(WEDGE, name=f"{unique_name}-b", on="n2", checkpoint="on-request")

    def relay(src: str, dst: str) -> object:
        try:
            return codec.unpack(client.invoke(src, "relay", codec.pack(dst)).result)
        except HermesError as exc:
            return exc

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        # Each holds its atom for 300 ms, then calls the other: a cycle across two chains.
        a = pool.submit(relay, first, second)
        b = pool.submit(relay, second, first)
        outcomes = [a.result(timeout=40), b.result(timeout=40)]
    took = time.monotonic() - started
    failed = [o for o in outcomes if isinstance(o, HermesError)]
    assert len(failed) == 1, outcomes
    assert isinstance(failed[0], MethodError)
    assert "call_cycle: wait cycle" in str(failed[0])
    assert [o for o in outcomes if not isinstance(o, HermesError)] == [1]
    assert took < 3.0, f"the cycle took {took:.1f} s to be reported"
    # Both atoms keep serving.
    assert codec.unpack(client.invoke(first, "ping", NIL).result) >= 1
    assert codec.unpack(client.invoke(second, "ping", NIL).result) >= 1


def _start_small_node(cluster: LocalCluster, name: str, *extra: str) -> None:
    """A node with a handful of workers, so a test can occupy all of them."""
    cluster.start_node(NodeSpec(name, options=extra))
    cluster.wait_registered(nodes=[name])


def test_a_node_whose_workers_are_all_stuck_gives_up_its_session(
    cluster: LocalCluster, client: Client, unique_name: str
) -> None:
    _start_small_node(cluster, "n4", "--workers", "2", "--unresponsive-limit", "4")
    wedged = client.create(WEDGE, name=f"{unique_name}-w", on="n4")
    hostage = client.create(WEDGE, name=f"{unique_name}-h", on="n4")
    assert codec.unpack(client.invoke(hostage, "ping", NIL).result) == 1
    pool = ThreadPoolExecutor(2)
    try:
        # Worker 1: a call blocked in recv(-1); worker 2: a checkpoint waiting
        # for that atom's turn. The node's own Status then finds no worker.
        blocked = pool.submit(client.invoke, wedged, "block", NIL, timeout=20.0)
        wait_until(lambda: client.node_status("n4").atom_calls >= 1, 30.0, "the call to block")
        checkpoint = pool.submit(client.checkpoint, wedged)
        stuck_at = time.monotonic()
        wait_until(lambda: "n4" not in client.nodes(), 30, "n4 to leave the cluster")
        gone_s = time.monotonic() - stuck_at
        # Its atoms are not held hostage: the storesite recovers them elsewhere.
        assert codec.unpack(client.invoke(hostage, "ping", NIL).result) == 2
        assert client.locate(hostage).node in ("n1", "n2", "n3")
        for done in (blocked, checkpoint):
            with contextlib.suppress(HermesError):
                done.result(timeout=40)
    finally:
        pool.shutdown(wait=True)
    # The process itself ends: nothing is left holding its port or its threads.
    pid = cluster.procs["node-n4"]
    wait_until(lambda: not alive(pid), 20, "n4's process to exit")
    log = (cluster.dir / "node-n4.log").read_text(errors="replace")
    assert "gives up its name-service session and stops" in log
    assert "every worker is stuck" in log
    assert "error: node n4 gave up serving" in log
    assert gone_s < 4 + 10, f"n4 left {gone_s:.1f} s after its workers were stuck"
    print(f"stuck node left the cluster {gone_s:.1f} s after its last worker was taken")
