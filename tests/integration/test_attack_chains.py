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
    """~3 s on the module's cluster: 41 atoms created on n1."""
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
