"""What HTTP callers can make the gateway hold (docs/DESIGN.md §13): memory, threads.

A JSON body of 8 MiB (the limit) can parse to ~25 times its size in Python
objects (``[{},{},...]``: a dict of ~64 bytes for every 3 bytes). A call's
arguments are sent as msgpack, no bigger than the body; the parsed value must
not stay alive while the call waits for its atom, or a few slow calls hold
gigabytes.
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import ClusterFactory, Gateway, start_gateway

from hermesx.client import Client
from hermesx.gateway.app import MAX_CALLS_PER_ATOM
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration

MAX_BODY = 8 * 2**20
CALLS = 8  # each waits for a frozen node while the gateway holds what it read
# A body's parsed value is ~200 MiB; one at a time may be parsing. Held while the
# calls wait, eight of them would be well over a gigabyte.
BOUND_MIB = 700


@pytest.fixture(scope="module")
def lone_gateway(cluster_factory: ClusterFactory) -> Iterator[Gateway]:
    """A 2-node cluster with its gateway: the tests freeze n1 for a few seconds, less
    than its 30 s session, so it stays a member."""
    gw = start_gateway(cluster_factory(2, session_timeout=30.0))
    try:
        yield gw
    finally:
        gw.http.close()


def _rss_mib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def test_calls_waiting_on_their_atom_do_not_hold_their_parsed_bodies(
    lone_gateway: Gateway, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    gw = lone_gateway
    with Client(gw.cluster.zk, gw.cluster.name) as client:
        client.create(atoms["counter"], name=unique_name, on="n1")
    body = b"[" + b"{}," * (MAX_BODY // 3 - 1) + b"{}]"
    assert len(body) <= MAX_BODY
    gateway_pid = gw.cluster.procs["gateway"]
    node_pid = gw.cluster.procs["node-n1"]
    before = _rss_mib(gateway_pid)
    answers: list[int] = []
    peak = before

    def call() -> None:
        reply = gw.http.post(
            f"/v1/atoms/{unique_name}/get",
            params={"timeout": "4"},
            content=body,
            headers={"content-type": "application/json"},
        )
        answers.append(reply.status_code)

    threads = [threading.Thread(target=call) for _ in range(CALLS)]
    os.kill(node_pid, signal.SIGSTOP)
    try:
        for t in threads:
            t.start()

        def all_answered() -> bool:
            nonlocal peak
            peak = max(peak, _rss_mib(gateway_pid))
            return len(answers) == CALLS

        wait_until(all_answered, timeout=60.0, every=0.05, what="every call answered")
    finally:
        os.kill(node_pid, signal.SIGCONT)
        for t in threads:
            t.join(timeout=60.0)
    grown = peak - before
    assert grown < BOUND_MIB, f"the gateway grew {grown} MiB for {CALLS} waiting calls"
    # Nothing else lost: the gateway and the atom answer as before.
    reply = gw.http.post(f"/v1/atoms/{unique_name}/get")
    assert reply.status_code == 200 and reply.json()["result"] == 0


def _threads(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads for process {pid}")


def test_calls_waiting_on_a_frozen_node_leave_the_gateway_to_the_other_atoms(
    lone_gateway: Gateway, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    """~10 s. The gateway ran every call on one pool of 40 threads: 48 calls to an atom
    whose node froze held all of them, and a call to an atom on a healthy node waited
    until those timed out. Half the calls name the atom by its GUID: counted apart from
    its name, they held twice the threads one atom may hold."""
    gw = lone_gateway
    stuck, healthy = f"{unique_name}-stuck", f"{unique_name}-ok"
    with Client(gw.cluster.zk, gw.cluster.name) as client:
        stuck_guid = client.create(atoms["counter"], name=stuck, on="n1")
        client.create(atoms["counter"], name=healthy, on="n2")
    assert gw.http.post(f"/v1/atoms/{stuck}/get").status_code == 200
    gateway_pid = gw.cluster.procs["gateway"]
    node_pid = gw.cluster.procs["node-n1"]
    ended: list[tuple[float, int]] = []  # (when, status) of the calls to the stuck atom

    def call(target: str) -> None:
        reply = gw.http.post(f"/v1/atoms/{target}/get", params={"timeout": "6"})
        ended.append((time.monotonic(), reply.status_code))

    targets = (stuck, stuck_guid)
    threads = [threading.Thread(target=call, args=(targets[i % 2],)) for i in range(48)]
    base = _threads(gateway_pid)
    os.kill(node_pid, signal.SIGSTOP)
    try:
        for t in threads:
            t.start()
        wait_until(
            lambda: _threads(gateway_pid) >= base + 16 or ended,
            timeout=30.0,
            what="the gateway waiting on the frozen node",
        )
        reply = gw.http.post(f"/v1/atoms/{healthy}/get", params={"timeout": "20"})
        answered_at = time.monotonic()
    finally:
        os.kill(node_pid, signal.SIGCONT)
        for t in threads:
            t.join(timeout=60.0)
    assert reply.status_code == 200 and reply.json()["result"] == 0, reply.text
    waited = [at for at, status in ended if status != 503]
    assert waited, ended
    assert len(waited) <= MAX_CALLS_PER_ATOM, sorted(status for _, status in ended)
    # Answered while the calls to the frozen node still waited, not after they gave up.
    assert answered_at < min(waited), (answered_at, sorted(ended)[:3])
