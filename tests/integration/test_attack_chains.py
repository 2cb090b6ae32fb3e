"""A chain of atoms calling one another may not take its node's threads (docs/DESIGN.md §3).

Each atom on a synchronous chain waits for the next while one thread of its
node's syscall pool (32 threads) runs that next call. One client request
through 40 ``caller`` atoms on one node took all 32 threads: the 33rd call
queued behind the chain that waited on it, until the deadline, and every other
atom of the node that invoked anything queued behind too. A chain is now cut
at ``MAX_CALL_DEPTH`` atoms with a clear error, at once.
"""

from __future__ import annotations

import pathlib
import threading
from typing import Any

import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import HermesError
from hermesx.local.cluster import LocalCluster
from hermesx.runtime.syscalls import MAX_CALL_DEPTH

pytestmark = pytest.mark.integration

DEEP = 40  # past the 32 threads of a node's syscall pool


def _chain(callers: list[str], last: str) -> Any:
    """Arguments for ``callers[0].call`` that go through every caller, then ``last.get``."""
    spec: Any = [last, "get", None]
    for guid in reversed(callers[1:]):
        spec = [guid, "call", spec]
    return spec


def test_a_chain_of_atoms_deeper_than_the_limit_fails_at_once_and_the_node_goes_on(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path]
) -> None:
    """~1 s on the module's cluster: 41 atoms created on n1."""
    callers = [client.create(atoms["caller"], on="n1") for _ in range(DEEP)]
    counter = client.create(atoms["counter"], on="n1")
    with pytest.raises(HermesError, match="call chain too deep") as refused:
        client.invoke(callers[0], "call", codec.pack(_chain(callers, counter)), timeout=20.0)
    assert f"at most {MAX_CALL_DEPTH}" in str(refused.value)
    # The longest chain allowed goes through, and so does a short one beside it.
    longest = callers[: MAX_CALL_DEPTH - 1]  # and the counter: MAX_CALL_DEPTH atoms
    outcome = client.invoke(longest[0], "call", codec.pack(_chain(longest, counter)))
    assert codec.unpack(outcome.result) == 0
    outcome = client.invoke(callers[-1], "call", codec.pack([counter, "incr", 1]))
    assert codec.unpack(outcome.result) == 1


def test_chains_at_the_limit_side_by_side_never_wait_on_one_another(
    cluster: LocalCluster, client: Client, atoms: dict[str, pathlib.Path]
) -> None:
    """~1 s on the module's cluster: 4 x 15 callers created on n2. Four chains of 16 atoms
    need 60 of the node's 32 threads for outgoing calls at once."""
    chains = [[client.create(atoms["caller"], on="n2") for _ in range(MAX_CALL_DEPTH - 1)]]
    chains += [[client.create(atoms["caller"], on="n2") for _ in range(MAX_CALL_DEPTH - 1)]]
    chains += [[client.create(atoms["caller"], on="n2") for _ in range(MAX_CALL_DEPTH - 1)]]
    chains += [[client.create(atoms["caller"], on="n2") for _ in range(MAX_CALL_DEPTH - 1)]]
    counter = client.create(atoms["counter"], on="n2")
    outcomes: list[str] = []
    start = threading.Barrier(len(chains))

    def run(chain: list[str]) -> None:
        start.wait(timeout=30)
        try:
            client.invoke(chain[0], "call", codec.pack(_chain(chain, counter)), timeout=20.0)
            outcomes.append("ok")
        except HermesError as exc:
            outcomes.append(f"{exc.kind}: {str(exc)[-200:]}")

    threads = [threading.Thread(target=run, args=(chain,)) for chain in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(outcomes) == len(chains)
    # Each went through or was refused at once (all four may be, when each had taken
    # a quarter of the threads); none waited on the others until its deadline.
    assert all(o == "ok" or "would wait on itself" in o for o in outcomes), outcomes
    # And the node's threads are free again: a chain alone goes through.
    outcome = client.invoke(chains[0][0], "call", codec.pack(_chain(chains[0], counter)))
    assert codec.unpack(outcome.result) == 0
