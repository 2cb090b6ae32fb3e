"""The HTTP gateway's endpoints, as a program in another language uses them (docs/DESIGN.md §13)."""

from __future__ import annotations

import json
import pathlib

import grpc
import httpx
import pytest
from conftest import Gateway, hermesx_json

from hermesx.client import Client
from hermesx.rpc import roles
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.roles import GATEWAY_CERT_NAME
from hermesx.rpc.wire import TLSIdentity, open_channel
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration


def test_a_call_over_http_runs_the_method_and_answers_json(
    gateway: Gateway, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    with Client(gateway.cluster.zk, gateway.cluster.name) as client:
        guid = client.create(atoms["counter"], name=unique_name, on="n1", aliases=["team=web"])
    reply = gateway.http.post(f"/v1/atoms/{unique_name}/incr", content=b"5")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"result": 5, "guid": guid, "tad": {"node": "n1", "age": 1}}
    # By GUID too, with the hops the call took.
    traced = gateway.http.post(f"/v1/atoms/{guid}/incr", json=2, params={"trace": "1"})
    assert traced.json()["result"] == 7
    assert [h["event"] for h in traced.json()["trace"]][-1] == "ran"

    listed = {a["name"]: a for a in gateway.http.get("/v1/atoms").json()}
    assert listed[unique_name]["node"] == "n1"
    assert listed[unique_name]["state"] == "active"
    one = gateway.http.get(f"/v1/atoms/{unique_name}").json()
    assert one["guid"] == guid
    assert one["age"] == 1
    assert one["policy"]["checkpoint"] == "every-call"
    assert one["aliases"] == ["team=web"]

    nodes = {n["name"]: n for n in gateway.http.get("/v1/nodes").json()}
    assert set(nodes) == {"n1", "n2", "n3"}
    assert all(n["state"] == "live" for n in nodes.values())
    assert nodes["n1"]["atoms"] >= 1

    found = gateway.http.get("/v1/lookup", params={"pattern": unique_name}).json()
    assert found == [{"name": unique_name, "guid": guid}]
    scoped = gateway.http.get("/v1/lookup", params={"pattern": "w.*", "scope": "team", "all": 1})
    assert {"name": unique_name, "guid": guid} in scoped.json()

    chain = gateway.http.get(f"/v1/atoms/{unique_name}/chain").json()
    held = {s["node"]: s for s in chain["stashes"]}
    assert held["n1"]["active_here"] is True
    assert chain["location"] == {"node": "n1", "age": 1, "storesite": "s1"}

    spec = gateway.http.get("/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert "/v1/atoms/{target}/{method}" in spec["paths"]


def test_the_console_actions_move_passivate_and_checkpoint(
    gateway: Gateway, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    with Client(gateway.cluster.zk, gateway.cluster.name) as client:
        guid = client.create(atoms["counter"], name=unique_name, on="n1")
    # A GET answers from a reading begun after it: each step is seen apart.
    assert gateway.http.get(f"/v1/atoms/{unique_name}").json()["node"] == "n1"
    moved = gateway.http.post(f"/v1/atoms/{unique_name}/actions/migrate", json={"node": "n3"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["tad"]["node"] == "n3"
    assert gateway.http.get(f"/v1/atoms/{unique_name}").json()["node"] == "n3"
    assert hermesx_json(gateway.cluster, "locate", unique_name)["node"] == "n3"

    done = gateway.http.post(f"/v1/atoms/{unique_name}/actions/checkpoint")
    assert done.status_code == 200 and done.json()["tad"]["node"] == "n3"
    assert gateway.http.post(f"/v1/atoms/{unique_name}/actions/passivate").status_code == 200
    wait_until(
        lambda: gateway.http.get(f"/v1/atoms/{unique_name}").json()["state"] == "dormant",
        10,
        "the atom to show dormant",
    )
    # The next call activates it again.
    assert gateway.http.post(f"/v1/atoms/{unique_name}/get").json()["result"] == 0

    bad = gateway.http.post(f"/v1/atoms/{unique_name}/actions/migrate", json={"node": "n9"})
    assert bad.status_code == 404 and bad.json()["kind"] == "not_found"
    unknown = gateway.http.post(f"/v1/atoms/{unique_name}/actions/explode")
    assert unknown.status_code == 404

    # The event stream told of each step, in order.
    wanted = ["create", "migrate", "passivate", "activate"]
    assert wait_until(lambda: _event_kinds(gateway, guid, len(wanted)) == wanted, 10, "events")


def _event_kinds(gateway: Gateway, guid: str, count: int) -> list[str]:
    """The kinds of the first ``count`` events about ``guid`` a new event stream sends."""
    kinds: list[str] = []
    with gateway.http.stream("GET", "/v1/events") as stream:
        event = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "change":
                change = json.loads(line.removeprefix("data: "))
                if change.get("guid") == guid:
                    kinds.append(change["kind"])
            elif line.startswith("data: ") and event == "state":
                break  # the history comes first, then the state
    return kinds[:count]


def test_a_gateway_with_a_token_answers_only_requests_carrying_it(
    gateway: Gateway, tmp_path: pathlib.Path
) -> None:
    cluster = gateway.cluster
    token = "s3cret-token-of-this-test"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    url = cluster.start_gateway(
        options=["--token-file", str(token_file), "--plain-http"], part="gateway-token"
    )
    assert url.startswith("http://")
    try:
        with httpx.Client(base_url=url, timeout=30.0) as http:
            for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
                refused = http.get("/v1/nodes", headers=headers)
                assert refused.status_code == 401
                assert refused.json()["kind"] == "unauthorized"
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert http.post("/v1/atoms/x/get", headers=headers).status_code == 401
            allowed = http.get("/v1/nodes", headers={"Authorization": f"Bearer {token}"})
            assert allowed.status_code == 200 and len(allowed.json()) == 3
            # The console's page holds no data; its event stream takes the token in its query.
            assert http.get("/").status_code == 200
            with http.stream("GET", "/v1/events", params={"access_token": token}) as events:
                assert events.status_code == 200
                assert events.headers["content-type"].startswith("text/event-stream")
                first = next(events.iter_lines())
                assert first.startswith("event: ")
    finally:
        cluster.kill("gateway-token")


def test_the_gateway_certificate_may_call_only_what_clients_may(gateway: Gateway) -> None:
    """docs/DESIGN.md §10: nothing sent to the gateway can stage or activate a copy of an atom."""
    cluster = gateway.cluster
    identity = TLSIdentity(cluster.tls_dir, GATEWAY_CERT_NAME, cluster.name)
    with Client(cluster.zk, cluster.name) as client:
        addresses = {
            "Supervisor": client.nodes()["n1"].address,
            "Storesite": client.naming.storesites()["s1"].address,
        }
    internal = [
        key
        for key, allowed in roles.RPC_ROLES.items()
        if roles.GATEWAY not in allowed and key.partition("/")[0] in addresses
    ]
    assert "Supervisor/Activate" in internal and "Supervisor/StageCopy" in internal
    for key in internal:
        service, _, method = key.partition("/")
        channel = open_channel(addresses[service], tls=identity)
        try:
            stub = (pbg.SupervisorStub if service == "Supervisor" else pbg.StoresiteStub)(channel)
            descriptor = pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]
            request = getattr(pb, descriptor.input_type.name)()
            if descriptor.client_streaming:
                request = iter([request])
            with pytest.raises(grpc.RpcError) as refused:
                getattr(stub, method)(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, key
            assert f"refused {key}: role gateway" in (refused.value.details() or ""), key
        finally:
            channel.close()
