"""Bad input to the gateway: each a clear problem, and the gateway and the cluster keep serving.

docs/DESIGN.md §13: malformed JSON, an unknown atom or method, a 50 MB body,
a client sending a byte a second, path traversal in names, a cross-site
request to a mutating endpoint, an invalid Idempotency-Key and one reused
with other arguments.
"""

from __future__ import annotations

import pathlib
import threading

import pytest
from conftest import BODY_TIMEOUT_S, Gateway, read_status

from hermesx.client import Client

pytestmark = pytest.mark.integration

FIFTY_MB = 50 * 2**20


@pytest.fixture
def counter(gateway: Gateway, atoms: dict[str, pathlib.Path], unique_name: str) -> str:
    with Client(gateway.cluster.zk, gateway.cluster.name) as client:
        client.create(atoms["counter"], name=unique_name, on="n2")
    return unique_name


def _problem(reply: object, status: int, kind: str) -> str:
    import httpx

    assert isinstance(reply, httpx.Response)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    body = reply.json()
    assert body["kind"] == kind and body["status"] == status
    assert body["detail"]
    return str(body["detail"])


def _still_serving(gateway: Gateway, counter: str, expect: int) -> None:
    reply = gateway.http.post(f"/v1/atoms/{counter}/get")
    assert reply.status_code == 200 and reply.json()["result"] == expect


def test_requests_that_cannot_be_calls_get_a_clear_problem(gateway: Gateway, counter: str) -> None:
    http = gateway.http
    assert "not valid JSON" in _problem(
        http.post(f"/v1/atoms/{counter}/incr", content=b'{"n": 5'), 400, "bad_json"
    )
    assert "c-nobody" in _problem(http.post("/v1/atoms/c-nobody/incr", json=1), 404, "not_found")
    assert "nosuch" in _problem(http.post(f"/v1/atoms/{counter}/nosuch", json=1), 404, "method")
    _problem(http.get(f"/v1/atoms/{counter}/incr"), 405, "not_allowed")
    _problem(http.get("/v1/nowhere"), 404, "not_found")
    _problem(http.get("/v1/lookup", params={"pattern": "(("}), 400, "invalid_pattern")
    _still_serving(gateway, counter, 0)


def test_path_traversal_in_names_reaches_nothing(gateway: Gateway, counter: str) -> None:
    for path in (
        "/v1/atoms/../incr",
        "/v1/atoms/..%2F..%2Fetc%2Fpasswd/incr",
        "/v1/atoms/%2E%2E/incr",
        "/v1/atoms/../../etc/passwd",
        "/..%2F..%2Fetc%2Fpasswd",
        "/console.js/../../../etc/passwd",
        "/v1/atoms/a%00b/incr",
    ):
        sock = gateway.raw(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
            "Connection: close\r\n\r\n1".encode()
        )
        with sock:
            status, data = read_status(sock)
        assert status in (400, 404), (path, data[:300])
        assert b"application/problem+json" in data, (path, data[:300])
        assert b"root:" not in data
        if path == "/v1/atoms/../incr":
            assert status == 400 and b"invalid_name" in data
    _still_serving(gateway, counter, 0)


def test_a_fifty_megabyte_body_is_refused_without_reading_it(
    gateway: Gateway, counter: str
) -> None:
    # Told by its length: answered before the body is sent.
    sock = gateway.raw(
        f"POST /v1/atoms/{counter}/incr HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {FIFTY_MB}\r\n\r\n[".encode()
    )
    with sock:
        status, data = read_status(sock)
    assert status == 413 and b"too_large" in data
    # Without a length (chunked): counted as it arrives, refused at the limit.
    chunk = b"1" * 2**20

    def body() -> object:
        for _ in range(50):
            yield chunk

    reply = gateway.http.post(f"/v1/atoms/{counter}/incr", content=body())  # type: ignore[arg-type]
    _problem(reply, 413, "too_large")
    _still_serving(gateway, counter, 0)


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_client_sending_a_byte_a_second_is_cut_off_and_others_are_served(
    gateway: Gateway, counter: str, part: str
) -> None:
    head = f"POST /v1/atoms/{counter}/incr HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
    # The head cut short (a header line never ends), or whole with its body to come.
    sock = gateway.raw(head.encode() + (b"X-Slow: " if part == "head" else b"\r\n"))
    stop = threading.Event()

    def trickle() -> None:
        for _ in range(int(BODY_TIMEOUT_S) + 5):
            if stop.wait(1.0):
                return
            try:
                sock.sendall(b"1")
            except OSError:
                return

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        # Meanwhile every other caller is served.
        assert gateway.http.post(f"/v1/atoms/{counter}/incr", json=1).json()["result"] == 1
        sock.settimeout(BODY_TIMEOUT_S + 20)
        status, data = read_status(sock)
        assert status == 408, data[:300]
        assert b"slow_body" in data
        assert sock.recv(1) == b""  # and the connection is closed
    finally:
        stop.set()
        sender.join()
        sock.close()
    _still_serving(gateway, counter, 1)


def test_a_cross_site_request_may_not_change_the_cluster(gateway: Gateway, counter: str) -> None:
    http = gateway.http
    for headers in (
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        _problem(http.post(f"/v1/atoms/{counter}/incr", json=5, headers=headers), 403, "cross_site")
        _problem(
            http.post(f"/v1/atoms/{counter}/actions/passivate", headers=headers), 403, "cross_site"
        )
    # Nothing ran, and the atom was not moved.
    _still_serving(gateway, counter, 0)
    assert http.get(f"/v1/atoms/{counter}").json()["state"] == "active"
    # The console's own requests (same origin) pass.
    own = {"Origin": gateway.url, "Sec-Fetch-Site": "same-origin"}
    assert http.post(f"/v1/atoms/{counter}/incr", json=2, headers=own).json()["result"] == 2


def test_bad_and_reused_idempotency_keys_are_refused(gateway: Gateway, counter: str) -> None:
    http = gateway.http
    for key in ("has space", "x" * 256, "tab\there", "é"):
        reply = http.post(
            f"/v1/atoms/{counter}/incr", json=1, headers={"Idempotency-Key": key.encode()}
        )
        _problem(reply, 400, "bad_idempotency_key")
    first = http.post(f"/v1/atoms/{counter}/incr", json=3, headers={"Idempotency-Key": "k-1"})
    assert first.json()["result"] == 3
    # Same key, other arguments (or another method): 422, nothing runs.
    assert "other arguments" in _problem(
        http.post(f"/v1/atoms/{counter}/incr", json=4, headers={"Idempotency-Key": "k-1"}),
        422,
        "idempotency_key_reused",
    )
    _problem(
        http.post(f"/v1/atoms/{counter}/get", headers={"Idempotency-Key": "k-1"}),
        422,
        "idempotency_key_reused",
    )
    # Same key, same arguments (keys of a map in another order): the first reply again.
    again = http.post(f"/v1/atoms/{counter}/incr", json=3, headers={"Idempotency-Key": "k-1"})
    assert again.json()["result"] == 3
    assert again.json()["request_id"] == first.json()["request_id"]
    _still_serving(gateway, counter, 3)
