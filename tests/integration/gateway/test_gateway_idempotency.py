"""An HTTP call retried with its Idempotency-Key runs once (docs/DESIGN.md §13, §4).

Across a migration, the kill -9 of the node hosting the atom (recovered
elsewhere from its checkpoint, reply table and all) and the kill -9 of the
gateway itself: the counter's state counts the runs.
"""

from __future__ import annotations

import pathlib

import pytest
from conftest import Gateway, start_gateway

from hermesx.client import Client

pytestmark = pytest.mark.integration


def test_a_retried_call_runs_once_across_a_move_and_kill_9s(
    recovering_gateway: Gateway, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    gateway = recovering_gateway
    cluster = gateway.cluster
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["counter"], name=unique_name, on="n1")

        def call(gw: Gateway, key: str, n: int = 1) -> dict[str, object]:
            reply = gw.http.post(
                f"/v1/atoms/{unique_name}/incr", json=n, headers={"Idempotency-Key": key}
            )
            assert reply.status_code == 200, reply.text
            data: dict[str, object] = reply.json()
            return data

        first = call(gateway, "order-1")
        assert first["result"] == 1
        assert call(gateway, "order-1") == first

        client.migrate(unique_name, "n2")
        again = call(gateway, "order-1")
        assert again["result"] == 1 and again["request_id"] == first["request_id"]
        assert again["tad"] != first["tad"]  # answered by the moved atom, from its table

        cluster.kill("node-n2")
        after_kill = call(gateway, "order-1")
        assert after_kill["result"] == 1
        where = client.locate(unique_name)
        assert where.node != "n2"

        # The gateway's own kill -9: the key is still bound to its arguments.
        cluster.kill("gateway")
        gateway.http.close()
        restarted = start_gateway(cluster)
        try:
            assert call(restarted, "order-1")["result"] == 1
            refused = restarted.http.post(
                f"/v1/atoms/{unique_name}/incr", json=7, headers={"Idempotency-Key": "order-1"}
            )
            assert refused.status_code == 422
            assert call(restarted, "order-2")["result"] == 2
            # Once per key: the counter counted two runs, whatever was retried.
            assert client.atom(unique_name).get() == 2
        finally:
            restarted.http.close()
