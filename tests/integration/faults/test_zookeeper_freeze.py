"""The only ZooKeeper server frozen (SIGSTOP) longer than a session, then resumed.

A frozen server expires no session while it is stopped, but its clock runs on:
once resumed it expires every session at once (nodes', storesites') before
their heartbeats are read. Every ephemeral node is gone together and every
node fences itself and drops its atoms, while a client keeps calling and
another keeps moving the atom from node to node. The promises hold through
that (docs/DESIGN.md §5, §6, §7): no acknowledged call lost or run twice (two
live copies would answer two calls with one value), every part registers
again, and the atom is served by name afterwards.
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time

from faultkit import ClusterStarter, LoadGenerator, Report, assert_nothing_lost, final_value, tally

from hermesx.client import Client
from hermesx.core.errors import HermesError
from hermesx.testing.wait import wait_until
from nameservice.zookeeper import ZooKeeperServer, open_shared_root

SESSION_S = 2.0
NODES = ("n1", "n2", "n3")


def test_the_zookeeper_server_frozen_past_every_session_while_the_atom_moves(
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
    report: Report,
    tmp_path: pathlib.Path,
) -> None:
    """~20 s: a ZooKeeper and a cluster of its own, 6 s frozen."""
    with ZooKeeperServer(data_dir=tmp_path / "zk") as zk:
        open_shared_root(zk.connect_string)
        cluster = start_cluster(list(NODES), zk=zk.connect_string, session_timeout=SESSION_S)
        stop_moves = threading.Event()
        moves: list[tuple[float, str]] = []  # (when, "moved" or the error's kind)

        def mover(admin: Client) -> None:
            for i in range(1, 10_000):  # bounded; ends when told
                try:
                    admin.migrate("c", NODES[i % len(NODES)])
                    moves.append((time.monotonic(), "moved"))
                except HermesError as exc:
                    moves.append((time.monotonic(), exc.kind))
                if stop_moves.wait(0.02):
                    return

        with Client(cluster.zk, cluster.name) as client, Client(cluster.zk, cluster.name) as admin:
            client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
            load = LoadGenerator(
                client.address.zk, client.address.cluster, "c", threads=2, call_timeout=10.0
            )
            admin.locate("c")  # connected before ZooKeeper freezes
            moving = threading.Thread(target=mover, args=(admin,), name="mover")
            with load:
                load.wait_acks(20)
                moving.start()
                try:
                    pid = zk.pid
                    assert pid is not None
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        time.sleep(3 * SESSION_S)  # the fault itself: frozen past every session
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    back_at = time.monotonic()
                    load.wait_acks(20, since=back_at, timeout=60.0)
                    wait_until(
                        lambda: sum(1 for at, m in moves if at > back_at and m == "moved") >= 3,
                        timeout=30.0,
                        what="three moves after ZooKeeper came back",
                    )
                finally:
                    stop_moves.set()
                    moving.join(timeout=60.0)
                cluster.wait_registered(timeout=30.0)
            final = final_value(client, "c", timeout=30.0)
            where = client.locate("c")
            assert client.atom("c").incr(1) == final + 1
        t = tally("ZooKeeper frozen > every session, moving", load.records, final)
        t.notes.update(
            located=f"{where.node}@{where.age}",
            moves={k: sum(1 for _, m in moves if m == k) for k in {m for _, m in moves}},
        )
        report(t)
        assert_nothing_lost(t)
