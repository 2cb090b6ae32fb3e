"""Attack: many callers to a peer whose call listener never answers (a cut-off host).

docs/DESIGN.md §4: a call ends by its deadline. A ``CallPool`` opens one
connection per address, one opener at a time; the other callers to that address
waited for the opener without a bound, and then each tried in turn itself, so
with eight threads calling a black-holed peer the last one waited eight connect
timeouts, far past its own deadline.
"""

from __future__ import annotations

import pathlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from hermesx.core.errors import HermesError
from hermesx.rpc import security
from hermesx.rpc.callclient import CallPool
from hermesx.rpc.wire import TLSIdentity

CALLERS = 6
TIMEOUT_S = 1.0
# What a caller may take past its own deadline on a loaded machine (the old wait
# was CALLERS connect timeouts for the last caller).
SLACK_S = 2.0


@pytest.fixture
def silent() -> Iterator[str]:
    """A listener the kernel accepts connections for, which never says a word."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_callers_to_a_silent_peer_each_give_up_by_their_own_deadline(
    tmp_path: pathlib.Path, silent: str
) -> None:
    security.init_certs(tmp_path, "silent", {"c1": "client"})
    pool = CallPool(TLSIdentity(tmp_path, "c1", "silent"))
    took: list[float] = []
    errors: list[str] = []

    def caller() -> None:
        started = time.monotonic()
        try:
            pool.connection(silent, timeout=TIMEOUT_S)
        except HermesError as exc:
            errors.append(exc.kind)
        took.append(time.monotonic() - started)

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CALLERS * 5 + 10)
    finally:
        pool.close()
    # The first caller's connect times out (unreachable); the others' waits for it end at
    # their deadline (timeout: the peer may only be slow, its connections stay).
    assert set(errors) <= {"unreachable", "timeout"} and len(errors) == CALLERS, errors
    assert max(took) < TIMEOUT_S + SLACK_S, sorted(took)
