"""Exactly-once from the friendly API, under faults (issue 11, item 7; docs/DESIGN.md §4, §6).

* An application retrying ``client.atom("c").incr(1)`` through a kill -9 of
  the storesite counts exactly: the client resends each call's request id
  until its deadline, then says ``outcome_unknown`` with the id, and the
  application's retry by that id runs the increment at most once.
* Home moves (``hermesx storesite move``) under load fail no call: the node
  follows the atom's records to the new home instead of failing the
  every-call checkpoint.
* A retry whose reply has left the atom's reply window (``hermesx create
  --reply-window``) is refused with ``request_expired`` and does not run,
  after a move, a passivation and a recovery as well.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
from faultkit import (
    CallRecord,
    ClusterStarter,
    LoadGenerator,
    Report,
    assert_nothing_lost,
    counter_cluster,
    final_value,
    restart_storesite,
    storesite_address,
    tally,
)

from hermesx.client import Client
from hermesx.core.errors import HermesError, OutcomeUnknownError, RequestExpiredError
from hermesx.local.cluster import LocalCluster
from hermesx.testing.wait import wait_until


@dataclass
class App:
    """An application that increments a counter and retries a call whose outcome is unknown."""

    client: Client
    target: str
    values: list[int] = field(default_factory=list)
    unknown: int = 0  # calls that ended outcome_unknown and were retried by their id
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        while not self.stop.is_set() and self.run_once():
            pass

    def run_once(self) -> bool:
        """One increment, retried by its id while its outcome is unknown; False on failure."""
        try:
            value = self.client.atom(self.target).incr(1)
        except OutcomeUnknownError as exc:
            with self.lock:
                self.unknown += 1
            value = self.retry(exc.request_id)
        except HermesError as exc:
            self.failures.append(f"{exc.kind}: {exc}")
            return False
        if value is None:
            return False
        with self.lock:
            self.values.append(value)
        return True

    def retry(self, request_id: str) -> int | None:
        """The same increment again, by its request id, until it is settled (bounded)."""
        give_up = time.monotonic() + 90.0
        while time.monotonic() < give_up:
            try:
                value = self.client.atom(self.target, request_id=request_id).incr(1)
            except OutcomeUnknownError:
                continue
            except HermesError as exc:
                self.failures.append(f"retry of {request_id}: {exc.kind}: {exc}")
                return None
            assert isinstance(value, int)
            return value
        self.failures.append(f"retry of {request_id} never settled")
        return None

    def acks(self) -> int:
        with self.lock:
            return len(self.values)


class Apps:
    """Applications on a client each (deadlines of ``timeout`` s), incrementing ``target``
    on threads of their own from entry to exit."""

    def __init__(self, cluster: LocalCluster, target: str, n: int = 3, timeout: float = 1.5):
        self.clients = [Client(cluster.zk, cluster.name, timeout=timeout) for _ in range(n)]
        self.apps = [App(c, target) for c in self.clients]
        self.threads = [
            threading.Thread(target=a.run, name=f"app-{i}") for i, a in enumerate(self.apps)
        ]

    def __enter__(self) -> Apps:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for a in self.apps:
            a.stop.set()
        for t in self.threads:
            t.join(timeout=120.0)
        for c in self.clients:
            c.close()

    def acks(self) -> int:
        return sum(a.acks() for a in self.apps)

    def wait_more(self, n: int, timeout: float = 60.0) -> None:
        """Wait until the applications saw ``n`` more increments acknowledged."""
        goal = self.acks() + n
        wait_until(lambda: self.acks() >= goal, timeout, f"{n} more increments")

    @property
    def values(self) -> list[int]:
        """Every value an increment returned, sorted."""
        return sorted(v for a in self.apps for v in a.values)

    @property
    def failures(self) -> list[str]:
        return [f for a in self.apps for f in a.failures]

    @property
    def stuck(self) -> bool:
        return any(t.is_alive() for t in self.threads)


def test_app_retry_loop_counts_exactly_through_a_storesite_kill(
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    with counter_cluster(start_cluster, atoms["counter"]) as (cluster, admin):
        # Short deadlines, so calls during the outage end outcome_unknown and the apps retry.
        with Apps(cluster, "c") as apps:
            apps.wait_more(30)
            # The outage: every-call checkpoints cannot be made.
            restart_storesite(cluster, admin, down_for=3.0)
            apps.wait_more(30)
        final = final_value(admin, "c")
    values = apps.values
    unknown = sum(a.unknown for a in apps.apps)
    failures = apps.failures
    acked = [CallRecord("", 0.0, 0.0, v, "", 0, "", "", True, False) for v in values]
    t = tally("item 7: app retries by request id through a storesite kill", acked, final)
    t.notes.update(outcome_unknown_retried=unknown)
    report(t)
    assert_nothing_lost(t)
    assert not failures, failures[:3]
    assert not apps.stuck
    # Each increment the apps believe succeeded was applied once, and nothing else was.
    assert final == len(values), (final, len(values))
    assert values == list(range(1, final + 1)), values
    assert unknown > 0, "no call ended outcome_unknown: the outage was not exercised"


def test_home_moves_under_load_fail_no_call(
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    cluster = start_cluster(["n1", "n2"])
    cluster.start_storesite("s2", init=True)
    cluster.wait_registered()
    env = {**os.environ, "HERMESX_ZK": cluster.zk, "HERMESX_CLUSTER": cluster.name}
    moves = 0
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
        # Each call sent once: a failure of the node to follow the move shows.
        load = LoadGenerator(
            client.address.zk, client.address.cluster, "c", threads=3, settle=False
        )
        with load:
            load.wait_acks(20)
            home = client.locate("c").storesite
            other = "s2" if home == "s1" else "s1"
            for destination in [other, home] * 4:
                if moves == 0:
                    # The first by the CLI; the others by the API it calls (the same
                    # move, without a new interpreter each time).
                    proc = subprocess.run(
                        [sys.executable, "-m", "hermesx", "storesite", "move", "c", destination],
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                    assert proc.returncode == 0, proc.stderr
                else:
                    client.move_home("c", destination)
                moves += 1
                assert client.locate("c").storesite == destination
                load.wait_acks(10, since=time.monotonic())
        final = final_value(client, "c")
    records = load.records
    t = tally("item 7: 8 home moves under load (every-call)", records, final)
    failed = [r for r in records if not r.ok]
    t.notes.update(home_moves=moves)
    report(t)
    assert_nothing_lost(t)
    assert moves == 8
    assert not failed, failed[:3]
    assert len(records) >= 100


def test_a_retry_past_the_reply_window_is_refused_through_moves_and_recoveries(
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
) -> None:
    cluster = start_cluster(["n1", "n2", "n3"])
    env = {**os.environ, "HERMESX_ZK": cluster.zk, "HERMESX_CLUSTER": cluster.name}
    argv = ["create", str(atoms["counter"]), "--name", "c", "--on", "n1", "--reply-window", "8"]
    create = subprocess.run(
        [sys.executable, "-m", "hermesx", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert create.returncode == 0, create.stderr
    with Client(cluster.zk, cluster.name) as client:
        ids = client.invoker.request_ids
        old, recent = ids.next(), ""
        assert client.atom("c", request_id=old).incr(1) == 1
        for _ in range(20):
            recent = ids.next()
            client.atom("c", request_id=recent).incr(1)

        def refused_and_still(value: int) -> None:
            with pytest.raises(RequestExpiredError, match="reply window"):
                client.atom("c", request_id=old).incr(1)
            # A retry inside the window gets its first reply; the counter does not move.
            assert client.atom("c", request_id=recent).incr(1) == value
            assert client.atom("c").get() == value

        refused_and_still(21)
        client.migrate("c", "n2")  # a move carries the window and what it forgot
        refused_and_still(21)
        client.passivate("c")  # dormant, then activated from its checkpoint
        refused_and_still(21)
        where = client.locate("c").node
        cluster.kill(f"node-{where}")  # recovered from its checkpoint elsewhere
        wait_until(lambda: client.locate("c").node != where, 60.0, "the atom to be recovered")
        refused_and_still(21)
        # New calls run as ever.
        assert client.atom("c").incr(1) == 22


def test_a_replayed_reply_is_acknowledged_only_once_its_state_is_durable(
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
) -> None:
    cluster = start_cluster(["n1", "n2"])
    with Client(cluster.zk, cluster.name, timeout=1.5) as client:
        client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
        assert client.atom("c").incr(1) == 1
        old_address = client.naming.storesites()["s1"].address
        cluster.kill("storesite-s1")
        with pytest.raises(OutcomeUnknownError) as unknown:
            client.atom("c").incr(1)  # runs on n1; its checkpoint cannot be made
        request_id = unknown.value.request_id
        # Its reply is in the atom's table, but the state holding it is not durable:
        # the retry is not acknowledged either.
        with pytest.raises(OutcomeUnknownError):
            client.atom("c", request_id=request_id).incr(1)
        # The node dies with that state; the storesite recovers its last durable one.
        cluster.kill("node-n1")
        cluster.start_storesite("s1")
        wait_until(
            lambda: storesite_address(client) not in ("", old_address),
            60.0,
            "the restarted storesite to register",
        )
        settled = Client(cluster.zk, cluster.name, timeout=60.0)
        try:
            # The retry runs the increment once, on the recovered copy.
            assert settled.atom("c", request_id=request_id).incr(1) == 2
            assert settled.atom("c", request_id=request_id).incr(1) == 2
            assert settled.atom("c").get() == 2
            assert settled.locate("c").node == "n2"
        finally:
            settled.close()
