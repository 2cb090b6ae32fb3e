"""Forwarding while an atom moves: a call never bounces back where the atom was (docs/DESIGN.md §4).

A move's destination whose stash still names an older place of the atom
(it knew the atom before) holds a staged copy newer than that: a call
forwarded to it there waits for the copy to serve, instead of going back
along its stale stash to the node that just forwarded it (which forwards it
here again, until the hop limit).
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Sequence

import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import HermesError, OutcomeUnknownError
from hermesx.core.types import Hop, InvokeOutcome
from hermesx.local.cluster import LocalCluster
from hermesx.testing.clusters import part_log
from hermesx.testing.moves import active_copies, move_in_background
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration

# How long the source waits after dropping the atom before it tells the destination.
WINDOW_S = 2.0


def _events(trace: Sequence[Hop]) -> list[tuple[str, str]]:
    return [(h.node, h.event) for h in trace]


def _move_back_paused(
    cluster: LocalCluster,
    client: Client,
    tester: Client,
    wasm: pathlib.Path,
    name: str,
    step: str = "dropped",
) -> tuple[str, threading.Thread, list[str]]:
    """``name`` lived on n2, moved to n1 (so n2's stash names n1, and so does
    ``client``'s); now it moves back to n2, and n1 pauses at ``step``: by default
    after COMMIT, having dropped the atom and pointing at n2, before it tells n2
    to activate its copy."""
    guid = client.create(wasm, name=name, on="n2")
    client.migrate(name, "n1")
    assert client.atom(name).incr(1) == 1
    assert client.stash_of("n2", guid).node == "n1"
    paused = f"paused at {step}"
    before = part_log(cluster, "node-n1").count(paused)  # other tests' pauses
    tester.node_client.pause_at(tester.node_member("n1"), step, WINDOW_S)
    mover, outcome = move_in_background(tester, name, "n2")
    wait_until(lambda: part_log(cluster, "node-n1").count(paused) > before, 30, paused)
    return guid, mover, outcome


def test_a_call_forwarded_to_a_moves_destination_waits_there_instead_of_bouncing(
    cluster: LocalCluster,
    client: Client,
    tester: Client,
    atoms: dict[str, pathlib.Path],
    unique_name: str,
) -> None:
    guid, mover, moved = _move_back_paused(cluster, client, tester, atoms["counter"], unique_name)
    # Concurrent callers whose stash still says n1, one of them tracing its hops.
    outcomes: list[InvokeOutcome | HermesError] = []

    def call() -> None:
        try:
            outcomes.append(client.invoke(unique_name, "incr", codec.pack(1), trace=True))
        except HermesError as exc:
            outcomes.append(exc)

    callers = [threading.Thread(target=call) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    mover.join(30)
    assert moved == ["moved"]
    assert all(isinstance(o, InvokeOutcome) for o in outcomes), outcomes
    for outcome in outcomes:
        assert isinstance(outcome, InvokeOutcome)
        # n1 forwards once; n2 waits for its copy and runs the call: no hop back to n1.
        assert _events(outcome.trace) == [("n1", "forward"), ("n2", "waited"), ("n2", "ran")], (
            outcome.trace
        )
        assert outcome.tad is not None and outcome.tad.node == "n2"
    # Each call ran once.
    assert sorted(codec.unpack(o.result) for o in outcomes if isinstance(o, InvokeOutcome)) == [
        2,
        3,
        4,
        5,
    ]
    assert client.atom(unique_name).get() == 5
    assert active_copies(client, guid) == ["n2"]


def test_a_call_reaching_a_moves_destination_before_commit_waits_there_for_the_atom(
    cluster: LocalCluster,
    client: Client,
    tester: Client,
    atoms: dict[str, pathlib.Path],
    unique_name: str,
) -> None:
    # n2 holds the staged copy, not yet committed; its stash names n1, where the
    # atom is frozen. The call waits at n2 and runs there once the move is done.
    _, mover, moved = _move_back_paused(
        cluster, client, tester, atoms["counter"], unique_name, "transferred"
    )
    outcome = client.invoke(unique_name, "incr", codec.pack(1), via="n2", trace=True)
    mover.join(30)
    assert moved == ["moved"]
    assert codec.unpack(outcome.result) == 2
    assert _events(outcome.trace) == [("n2", "enter"), ("n2", "waited"), ("n2", "ran")]


def test_a_call_waiting_for_an_arriving_atom_ends_at_its_deadline_without_running(
    cluster: LocalCluster,
    client: Client,
    tester: Client,
    atoms: dict[str, pathlib.Path],
    unique_name: str,
) -> None:
    _, mover, moved = _move_back_paused(
        cluster, client, tester, atoms["counter"], unique_name, "transferred"
    )
    # The copy serves only once n1's pause is over: a call that may wait less gives up.
    with pytest.raises(OutcomeUnknownError):
        client.invoke(unique_name, "incr", codec.pack(1), via="n2", timeout=0.5)
    mover.join(30)
    assert moved == ["moved"]
    assert client.atom(unique_name).get() == 1
