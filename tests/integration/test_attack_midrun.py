"""A reentrant durable atom checkpointed while one of its calls waits mid-run, then
lost with its node (docs/DESIGN.md §4 "Exactly once", §6).

Call A of the reentrant, ``every-call`` atom raises its tally and then waits on a
call to a counter on another node (whose checkpoint is held). Meanwhile call B runs
at A's blocking point, and B's checkpoint — taken there — holds A's tally without
A's outcome. The node dies before A ends. A's retry, with the same request id, must
not run A a second time on a state that already holds A's first half: that
checkpoint records A as cut mid-run (a ``trap``), and its retry gets that.
"""

from __future__ import annotations

import pathlib
import threading

import pytest

from hermesx.client import Client
from hermesx.core.errors import AtomTrapError, HermesError
from hermesx.rpc.roles import TEST_CERT_NAME
from hermesx.testing.clusters import part_log
from hermesx.testing.plugin import ClusterFactory
from hermesx.testing.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_call_caught_mid_run_by_a_checkpoint_and_a_crash_does_not_run_twice(
    cluster_factory: ClusterFactory, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    cluster = cluster_factory(2, session_timeout=2.0, test_hooks=True)
    counter = f"{unique_name}c"
    with (
        Client(cluster.zk, cluster.name, timeout=60.0) as client,
        Client(cluster.zk, cluster.name, cert=TEST_CERT_NAME) as tester,
    ):
        client.create(
            atoms["tally"], name=unique_name, on="n1", reentrant=True, checkpoint="every-call"
        )
        client.create(atoms["counter"], name=counter, on="n2", checkpoint="every-call")
        assert client.atom(counter).incr(1) == 1
        tester.node_client.pause_at(tester.node_member("n2"), "checkpoint-snapshot", 4.0)
        request_id = client.invoker.request_ids.next()
        outcome: dict[str, object] = {}

        def first() -> None:
            try:
                proxy = client.atom(unique_name, request_id=request_id)
                outcome["result"] = proxy.tally_then_call([counter, "incr", 1])
            except HermesError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=first)
        thread.start()
        wait_until(
            lambda: "paused at checkpoint-snapshot" in part_log(cluster, "node-n2"),
            30.0,
            "the first call to wait on its callee",
        )
        # Runs at the first call's blocking point; its checkpoint holds tally 1.
        assert client.atom(unique_name).tally() == 1
        cluster.kill("node-n1")
        thread.join(90)
        assert client.atom(unique_name).tally() == 1, outcome
        # Its retry is told it was cut there; the callee's increment it made ran once.
        error = outcome.get("error")
        assert isinstance(error, AtomTrapError) and "cut mid-run" in str(error), outcome
        assert client.atom(counter).get() == 2
