"""Processes killed under load: nothing acknowledged is lost, nothing runs twice.

See docs/DESIGN.md §4, §6.

Scenarios 1 (kill -9 of the node hosting the atom), 2 (kill -9 of the
storesite, then restart) and 5 (an intermediate node of a forwarding chain
down). Each runs three client threads calling ``counter.incr(1)`` with
checkpoints after every call, then judges the final value against every
call's outcome (see ``faultkit.tally``).
"""

from __future__ import annotations

import pathlib
import time

from faultkit import (
    ClusterStarter,
    LoadGenerator,
    Report,
    assert_nothing_lost,
    counter_cluster,
    final_value,
    latency_ms,
    restart_storesite,
    tally,
)

from hermesx.client import Client
from hermesx.core.identity import TAD
from hermesx.rpc.roles import TEST_CERT_NAME
from hermesx.testing.wait import wait_until


def test_kill_node_hosting_the_atom(
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    nodes = ("n1", "n2", "n3")
    with counter_cluster(start_cluster, atoms["counter"], nodes, on="n2") as (cluster, client):
        load = LoadGenerator(client.address.zk, client.address.cluster, "c")
        with load:
            load.wait_acks(30)
            cluster.kill("node-n2")
            killed_at = time.monotonic()  # reaped: nothing after this can run on n2
            load.wait_acks(30, since=killed_at)
        final = final_value(client, "c")
        where = client.locate("c")
    records = load.records
    t = tally("1 kill -9 hosting node", records, final)
    after = [r for r in records if r.ok and r.started >= killed_at]
    t.notes.update(
        recovered_on=f"{where.node}@{where.age}",
        longest_call_ms=max((r.ended - r.started) * 1000 for r in records),
        acked_after_kill=len(after),
    )
    report(t)
    assert_nothing_lost(t)
    # The atom lives on, recovered from its checkpoint on a live node with a newer age.
    assert where.node in ("n1", "n3") and where.age > 1, where
    assert all(r.node == where.node for r in after), {r.node for r in after}


def test_kill_storesite_and_restart_it(
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    with counter_cluster(start_cluster, atoms["counter"]) as (cluster, client):
        # Two kinds of callers: ones that take a failure as final (the client
        # resends the id until its 30 s deadline), and ones with a short
        # deadline that send the same request id again until it is acknowledged.
        plain = LoadGenerator(client.address.zk, client.address.cluster, "c", threads=2)
        resubmitting = LoadGenerator(
            client.address.zk,
            client.address.cluster,
            "c",
            threads=2,
            resubmit_for=60.0,
            call_timeout=1.0,
        )
        with plain, resubmitting:
            plain.wait_acks(20)
            resubmitting.wait_acks(20)
            killed_at, back_at = restart_storesite(cluster, client, down_for=1.5)
            plain.wait_acks(20, since=back_at)
            resubmitting.wait_acks(20, since=back_at)
        final = final_value(client, "c")
        # Everything works afterwards: a new atom can be created and called.
        client.create(atoms["counter"], name="after", on="n2", checkpoint="every-call")
        assert client.atom("after").incr(3) == 3
    records = plain.records + resubmitting.records
    t = tally("2 kill -9 storesite", records, final)
    # Calls wait out the outage (the client resends their ids), so count the ones in flight.
    outage = [r for r in records if r.started < back_at and r.ended > killed_at]
    failed = [r for r in records if not r.ok]
    resubmitted = [r for r in resubmitting.records if r.attempts > 1]
    t.notes.update(
        outage_s=round(back_at - killed_at, 2),
        outage_calls=len(outage),
        failed_after_back=sum(1 for r in failed if r.started >= back_at + 1.0),
        resubmitted_calls=len(resubmitted),
        longest_resubmitted_s=round(max((r.ended - r.started for r in resubmitted), default=0), 2),
    )
    report(t)
    assert_nothing_lost(t)
    # During the outage a call fails with a clear, typed error (or waits and succeeds).
    assert all(r.clear and r.error for r in failed)
    assert {r.error_kind for r in failed} <= {"outcome_unknown", "unreachable"}, failed[:3]
    assert outage, "no call was in flight while the storesite was down"
    # Sending the same request id again ends every call acknowledged, exactly once.
    assert all(r.ok for r in resubmitting.records), resubmitting.records[-1]
    assert resubmitted, "no call needed a resubmission: the outage was not exercised"


def test_intermediate_node_of_a_forwarding_chain_down(
    start_cluster: ClusterStarter,
    atoms: dict[str, pathlib.Path],
    report: Report,
) -> None:
    cluster = start_cluster(["n1", "n2", "n3"])
    # The test certificate: the stale chain is planted through a test hook.
    with Client(cluster.zk, cluster.name, cert=TEST_CERT_NAME) as client:
        guid = client.create(atoms["counter"], name="c", on="n1", checkpoint="every-call")
        client.migrate("c", "n2")
        client.migrate("c", "n3")
        # n1 -> n2 (age 2) -> n3 (age 3): every call enters at n1.
        load = LoadGenerator(client.address.zk, client.address.cluster, "c", via="n1", trace=True)
        with load:
            load.wait_acks(20)
            killed_at = time.monotonic()
            cluster.kill("node-n2")

            # Calls through n1 taught it the shortcut to n3; put back the chain
            # through the now dead intermediate node, as it was before the load.
            # A reply still in flight may teach n1 the shortcut again: repeat
            # until the broken chain holds (then nothing passes n1 to teach it).
            def chain_holds() -> bool:
                if client.stash_of("n1", "c") == TAD("n2", 2):
                    return True
                client.node_client.stash_put(client.node_member("n1"), guid, TAD("n2", 2), 5.0)
                return False

            wait_until(chain_holds, 10.0, "n1's stash to point at the dead n2", every=0.1)
            load.wait_acks(30, since=time.monotonic())
        final = final_value(client, "c")
        where = client.locate("c")
    records = load.records
    t = tally("5 chain: middle node down", records, final)
    after = [r for r in records if r.ok and r.started >= killed_at]
    through_storesite = [r for r in after if r.storesite_fallback]
    t.notes.update(
        acked_after_kill=len(after),
        via_storesite_after_kill=len(through_storesite),
        p50_ms=latency_ms(after, 0.5),
    )
    report(t)
    assert_nothing_lost(t)
    # The atom never moved: the storesite pointed the broken chain to n3.
    assert where.node == "n3" and where.age == 3, where
    assert all(r.node == "n3" for r in after)
    assert through_storesite, "no call after the kill went through the storesite fallback"
    assert t.failed_clear == 0, t
