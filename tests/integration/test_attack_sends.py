"""Requests that wait on a node must leave it able to answer (docs/DESIGN.md §4, §6).

A ``send`` to an atom that is moving waits at its node until the move ends,
holding one of the node's workers, as a forwarded send waits on its next
node. Invocations are bounded by the node's invocation limit, which keeps a
few workers free for ``Status``; sends were not. Here 96 sends to an atom
held in a move (paused by a test hook for 14 s) took every worker of its
node, whose watchdog then found its own ``Status`` unanswered for 10 s and
gave up its session: every atom of the node was lost to it because one was
moving. Sends now count toward the invocation limit; those past it are
refused with ``capacity`` and the node stays a member.

Node n1 runs here with a watchdog limit of ``LIMIT_S`` (``--unresponsive-limit``;
10 s by default) so that each flood outlasts it well within a short test.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import threading
from collections.abc import Callable
from functools import partial

import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import HermesError
from hermesx.core.identity import TAD
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.routing.invoker import Invoker
from hermesx.rpc.node_client import call_address
from hermesx.rpc.roles import TEST_CERT_NAME
from hermesx.testing.clusters import part_log
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LIMIT_S = 5.0  # n1 gives up its session after this long without answering its own Status
WATCHED_N1 = NodeSpec("n1", options=("--unresponsive-limit", f"{LIMIT_S:g}"))


@pytest.fixture(scope="module")
def cluster(cluster_factory: ClusterFactory) -> LocalCluster:
    """n1 watched with the short limit, and n2; each test reads only its own part of n1's log."""
    return cluster_factory([WATCHED_N1, "n2"], session_timeout=2.0)


def test_sends_to_a_moving_atom_do_not_starve_the_nodes_own_status(
    cluster: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    logged = len(part_log(cluster, "node-n1"))
    with (
        Client(cluster.zk, cluster.name) as client,
        Client(cluster.zk, cluster.name) as other,
        Client(cluster.zk, cluster.name, cert=TEST_CERT_NAME) as tester,
    ):
        guid = client.create(atoms["counter"], name=unique_name, on="n1")
        # Held longer than the watchdog's limit, with room to spare.
        tester.node_client.pause_at(tester.node_member("n1"), "prepared", LIMIT_S + 3.0)
        moved: dict[str, object] = {}

        def move() -> None:
            try:
                moved["result"] = client.migrate(unique_name, "n2")
            except HermesError as exc:
                moved["error"] = exc

        mover = threading.Thread(target=move)
        mover.start()
        wait_until(
            lambda: "paused at prepared" in part_log(cluster, "node-n1")[logged:],
            30.0,
            "n1 to pause the move",
        )
        outcomes: list[str] = []

        def send(sender: Client) -> None:
            try:
                sender.invoker.send(guid, 1, b"")
                outcomes.append("sent")
            except HermesError as exc:
                outcomes.append(exc.kind)

        senders = [threading.Thread(target=send, args=(c,)) for c in (client, other) * 48]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(120)
        mover.join(120)
        log = part_log(cluster, "node-n1")[logged:]
        assert "every worker is stuck" not in log
        assert "n1" in client.nodes()
        assert "result" in moved, moved
        assert client.locate(unique_name).node == "n2"
        assert len(outcomes) == 96 and set(outcomes) <= {"sent", "capacity"}, outcomes
        assert client.atom(unique_name).incr(1) == 1


def test_checkpoint_requests_flooding_a_busy_atom_do_not_starve_the_nodes_own_status(
    cluster: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """Any role may ask for a checkpoint; each waits for its atom's turn (up to 30 s).
    96 clients' threads asking over and over while the atom spins took every worker of
    its node, which gave up its session (its atoms recovered elsewhere) once its
    watchdog's limit had passed.
    Such requests are now limited so that a worker stays free for Status; those past the
    limit are refused with ``capacity``."""
    logged = len(part_log(cluster, "node-n1"))
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["spin"], name=unique_name, on="n1")
        stop = threading.Event()
        kinds: list[str] = []

        def spin() -> None:
            while not stop.is_set():
                with contextlib.suppress(HermesError):
                    client.invoke(unique_name, "spin", codec.pack(None))

        def checkpoint() -> None:
            while not stop.is_set():
                try:
                    client.checkpoint(unique_name)
                    kinds.append("ok")
                except HermesError as exc:
                    kinds.append(exc.kind)

        threads = [threading.Thread(target=spin)]
        threads += [threading.Thread(target=checkpoint) for _ in range(96)]
        for thread in threads:
            thread.start()
        try:
            stop.wait(2.5 * LIMIT_S)  # past the watchdog's limit, twice
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert "every worker is stuck" not in part_log(cluster, "node-n1")[logged:]
        assert "n1" in client.nodes()
        assert client.locate(unique_name).node == "n1"
        assert "capacity" in kinds and set(kinds) <= {"ok", "capacity", "timeout"}, set(kinds)
        assert client.atom(unique_name).ok() == 1


SMALL_N1 = NodeSpec("n1", options=("--workers", "16"))  # 12 invocations at once, 4 per atom
SHARE = 4  # an atom's share of n1's workers, running or forwarding its calls and messages


@pytest.fixture(scope="module")
def small(cluster_factory: ClusterFactory) -> LocalCluster:
    """n1 with 16 workers, and n2: for the tests below, which stall one part at a time."""
    return cluster_factory([SMALL_N1, "n2"], session_timeout=10.0)


def _flood_while_stopped(
    pid: int, requests: list[Callable[[], object]], still_served: Callable[[], None]
) -> list[str]:
    """``requests`` (24 messages or calls, each sent by one function) at once while process
    ``pid`` is stopped (SIGSTOP): once those past the atom's share came back refused,
    ``still_served`` runs (an atom beside it must answer); then ``pid`` goes on. Each
    one's outcome: ``ok`` or its error's kind."""
    outcomes: list[str] = []

    def run(request: Callable[[], object]) -> None:
        try:
            request()
            outcomes.append("ok")
        except HermesError as exc:
            outcomes.append(exc.kind)

    threads = [threading.Thread(target=run, args=(request,)) for request in requests]
    refused = len(requests) - SHARE  # those past the atom's share, refused while the rest wait
    os.kill(pid, signal.SIGSTOP)
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(outcomes) >= refused, 20.0, "the requests past the share refused")
        still_served()
    finally:
        os.kill(pid, signal.SIGCONT)
        for thread in threads:
            thread.join(60)
    assert len(outcomes) == len(requests) and set(outcomes) <= {"ok", "capacity"}, outcomes
    assert outcomes.count("capacity") >= refused, outcomes
    return outcomes


def _handled_once(client: Client, guid: str, first: int, outcomes: list[str]) -> None:
    """The daemon ``guid`` handled each message acknowledged to its senders once: the
    ``first`` sent before the flood and those of ``outcomes`` that were acknowledged."""
    receiver = client.atom(guid)
    handled = first + outcomes.count("ok")
    wait_until(lambda: receiver.count() >= handled, 20.0, "the messages to be handled")
    assert receiver.count() == handled


def test_messages_waiting_on_one_durable_atom_leave_the_other_atoms_their_workers(
    small: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """A message to a durable (``every-call``) atom waits for a checkpoint holding it.
    With its storesite stalled (SIGSTOP), 24 messages to that one atom held every
    invocation n1 takes (12 with 16 workers), and a plain atom beside it, which needs no
    storesite, was refused ``capacity`` until the stall ended. A message now takes its
    atom's share, as a call does; those past it are refused ``capacity`` at once, and the
    ones that waited are acknowledged, and handled once, when the storesite is back."""
    cluster = small
    durable, plain = f"{unique_name}-d", f"{unique_name}-p"
    with contextlib.ExitStack() as stack:
        client, *senders = (stack.enter_context(Client(cluster.zk, cluster.name)) for _ in range(5))
        client.create(atoms["daemon"], name=durable, on="n1", checkpoint="every-call")
        client.create(atoms["counter"], name=plain, on="n1", checkpoint="on-request")
        assert client.atom(plain).incr(1) == 1
        for sender in senders:  # each knows where the atom is (the storesite tells)
            sender.invoker.send(durable, 3, b"first")
        outcomes = _flood_while_stopped(
            cluster.procs["storesite-s1"],
            [partial(s.invoker.send, durable, 3, b"m", timeout=30.0) for s in senders * 6],
            lambda: _expect(client.atom(plain).incr(1), 2),
        )
        assert "ok" in outcomes  # those within the share waited, and were acknowledged
        _handled_once(client, durable, len(senders), outcomes)


def _moved_with_a_neighbour(
    client: Client, atoms: dict[str, pathlib.Path], name: str
) -> tuple[str, TAD, str]:
    """A daemon created on n1 as ``name``-m and moved to n2 (n1 keeps a forwarding TAD),
    and a counter ``name``-p living on n1: the daemon's GUID, its TAD on n1, the counter."""
    moved = client.create(atoms["daemon"], name=f"{name}-m", on="n1", checkpoint="on-request")
    plain = client.create(atoms["counter"], name=f"{name}-p", on="n1", checkpoint="on-request")
    on_n1 = client.invoker.locate(moved)
    client.migrate(moved, "n2")
    return moved, on_n1, plain


def test_messages_forwarded_to_a_frozen_node_leave_the_forwarders_atoms_their_workers(
    small: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """A call forwarded to an atom on another node takes at most the atom's share of the
    forwarding node's workers; a message took any number: with n2 frozen (SIGSTOP), 24
    messages sent through n1 (by senders who knew the atom there before it moved) held
    every invocation n1 takes for 30 s each, and an atom living on n1 was refused
    ``capacity``. A forwarded message now takes the atom's share too.

    Each message has a sender of its own: a sender learns the atom's new node from any
    reply (a refusal of n1 carries it) and sends its next message straight to n2,
    frozen, where it waits; not what this test asks of n1."""
    cluster = small
    with contextlib.ExitStack() as stack:
        client, *clients = (stack.enter_context(Client(cluster.zk, cluster.name)) for _ in range(5))
        moved, on_n1, plain = _moved_with_a_neighbour(client, atoms, unique_name)
        senders = []
        for each in clients * 6:  # six senders on each client's connections
            sender = Invoker(each.naming, each.channels, settle_outcome=True)
            sender.stash.update(moved, on_n1)  # it knows the atom on n1 only
            senders.append(partial(sender.send, moved, 3, b"m", timeout=40.0))
        outcomes = _flood_while_stopped(
            cluster.procs["node-n2"], senders, lambda: _expect(client.atom(plain).incr(1), 1)
        )
        _handled_once(client, moved, 0, outcomes)


def test_calls_forwarded_to_a_frozen_node_leave_the_forwarders_atoms_their_workers(
    small: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """As messages above, calls: 24 calls forwarded through n1 (``via``) to an atom on a
    frozen n2 hold at most the atom's share of n1's workers; the rest are refused
    ``capacity`` at once, and an atom living on n1 answers meanwhile."""
    cluster = small
    with Client(cluster.zk, cluster.name) as client:
        moved, _, plain = _moved_with_a_neighbour(client, atoms, unique_name)
        call = partial(client.invoke, moved, "count", codec.pack(None), via="n1", timeout=40.0)
        outcomes = _flood_while_stopped(
            cluster.procs["node-n2"], [call] * 24, lambda: _expect(client.atom(plain).incr(1), 1)
        )
    assert "ok" in outcomes  # those within the share waited, and were answered


def _bytes_waiting_at(port: int) -> int:
    """Bytes received and not yet read on the connections accepted at local ``port``
    (/proc/net/tcp's rx_queue): what a stopped process was sent meanwhile."""
    waiting = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                # (Not the listening socket: its count is of connections not yet accepted.)
                if int(fields[1].rpartition(":")[2], 16) == port and fields[3] != "0A":
                    waiting += int(fields[4].partition(":")[2], 16)
    return waiting


def test_a_durable_call_waiting_on_a_frozen_storesite_holds_up_no_call_behind_it(
    small: LocalCluster, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """A durable call alone on its connection waits for its checkpoint on the
    connection's own thread, with no second reader; with the storesite stalled
    (SIGSTOP) that wait lasts until the call's deadline. The next call its client
    sends on the same connection, to a plain atom, must still be answered meanwhile
    (the listener's watch of slow requests reads for it), not after the durable one."""
    cluster = small
    durable, plain = f"{unique_name}-d", f"{unique_name}-p"
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["counter"], name=durable, on="n1", checkpoint="every-call")
        client.create(atoms["counter"], name=plain, on="n1", checkpoint="on-request")
        assert client.atom(durable).incr(1) == 1  # one at a time: a lone caller
        assert client.atom(plain).incr(1) == 1
        port = int((call_address(client.naming.storesites()["s1"]) or "").rpartition(":")[2])
        outcome: dict[str, object] = {}
        waiting = threading.Thread(
            target=lambda: outcome.setdefault("durable", client.atom(durable).incr(1))
        )
        os.kill(cluster.procs["storesite-s1"], signal.SIGSTOP)
        try:
            waiting.start()
            wait_until(lambda: _bytes_waiting_at(port) > 0, 20.0, "the durable call's checkpoint")
            behind = client.invoke(plain, "incr", codec.pack(1), timeout=10.0)
            assert codec.unpack(behind.result) == 2
            assert waiting.is_alive()  # answered while the durable call waited
        finally:
            os.kill(cluster.procs["storesite-s1"], signal.SIGCONT)
            waiting.join(60)
    assert outcome["durable"] == 2


def _expect(got: object, want: object) -> None:
    assert got == want, f"{got!r} != {want!r}"
