"""Exactly once through the inbox and a chain of delta records, real processes
(docs/DESIGN.md §4 "Exactly once", §6; atoms/ABI.md "The inbox").

Two every-call atoms built with the C SDK's inbox — a counter (replies through
the slot) and an echo whose replies alternate between under and over the
slot's 1 KiB (through ``hx.reply``) — take calls with request ids while their
chains of delta records grow past a cut, the atoms move to another node and
back, their home moves to another storesite, and the node holding them is
killed with SIGKILL. Recovered on the other node, a retry of every request id
gets its first reply byte for byte, and the next call sees every call exactly
once. Eight threads calling one echo atom at once each get their own
arguments back, under and over the inbox's and the slot's 1 KiB.
"""

from __future__ import annotations

import pathlib
import threading

import pytest

from hermesx.client import Client
from hermesx.core import codec
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.storesite_client import StoresiteClient
from storesite.chain import MAX_CHAIN

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _deltas_written(client: Client, sid: str) -> int:
    address = client.naming.storesites()[sid].address
    with StoresiteClient(address, sid=sid, channels=client.channels) as site:
        return site.status().deltas_written


def _args(name: str, n: int) -> bytes:
    if name == "counter":
        return codec.pack(n)
    # Under and over the SDK's 1 KiB reply slot, each reply its own.
    return codec.pack(bytes([n % 256]) * (200 if n % 2 else 1500))


def test_retries_after_moves_a_cut_and_a_kill_9_get_their_first_replies(
    cluster_factory: object, atoms: dict[str, pathlib.Path]
) -> None:
    cluster: LocalCluster = cluster_factory(  # type: ignore[operator]
        2, storesites=("s1", "s2"), session_timeout=2.0
    )
    methods = {"counter": "incr", "echo": "echo"}
    first: dict[str, dict[str, bytes]] = {name: {} for name in methods}
    calls = 0
    with Client(cluster.zk, cluster.name) as client:
        for name in methods:
            client.create(atoms[name], name=f"x-{name}", on="n2", checkpoint="every-call")

        def call_all(count: int) -> None:
            nonlocal calls
            for _ in range(count):
                calls += 1
                for name, method in methods.items():
                    rid = f"{name}-{calls}"
                    outcome = client.invoke(f"x-{name}", method, _args(name, calls), request_id=rid)
                    first[name][rid] = outcome.result

        call_all(MAX_CHAIN + 6)  # past a cut of the chain
        # They were written as delta records (a cut composed one whole).
        assert sum(_deltas_written(client, sid) for sid in ("s1", "s2")) >= 2 * MAX_CHAIN
        for name in methods:
            client.migrate(f"x-{name}", "n1")
        call_all(10)
        for name in methods:
            client.migrate(f"x-{name}", "n2")
            home = client.guid_of(f"x-{name}").split(":", 1)[0]
            client.move_home(f"x-{name}", "s1" if home == "s2" else "s2")
        call_all(10)
        cluster.kill("node-n2")
        for name, method in methods.items():
            for rid, reply in first[name].items():
                # A retry sends the same call (another one under its id is refused).
                n = int(rid.rsplit("-", 1)[1])
                again = client.invoke(f"x-{name}", method, _args(name, n), request_id=rid)
                assert again.result == reply, (name, rid)
            assert client.locate(f"x-{name}").node == "n1"
        assert codec.unpack(first["counter"][f"counter-{calls}"]) == calls * (calls + 1) // 2
        assert client.atom("x-counter").get() == calls * (calls + 1) // 2
        assert len(first["echo"]["echo-2"]) > 1024 and len(first["echo"]["echo-1"]) < 1024


def test_concurrent_calls_each_get_their_own_reply_through_the_inbox(
    cluster_factory: object, atoms: dict[str, pathlib.Path]
) -> None:
    cluster: LocalCluster = cluster_factory(1, session_timeout=2.0)  # type: ignore[operator]
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["echo"], name="mirror")
        wrong: list[tuple[int, int]] = []

        def caller(worker: int) -> None:
            for n in range(40):
                # Inputs and replies under and over the SDK's 1 KiB inbox and slot.
                size = (7, 900, 1100, 3000)[(worker + n) % 4]
                args = codec.pack(bytes([worker]) * size + n.to_bytes(2, "big"))
                if client.invoke("mirror", "echo", args).result != args:
                    wrong.append((worker, n))

        threads = [threading.Thread(target=caller, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
        assert not wrong, wrong[:5]
