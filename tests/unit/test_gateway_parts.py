"""The gateway's parts without servers: idempotency keys, problems, and the events of the console.

docs/DESIGN.md §13.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from hermesx.core.errors import NameNotFoundError, OutcomeUnknownError, UnreachableError
from hermesx.core.replies import MAX_REQUEST_ID_CHARS
from hermesx.gateway.idempotency import (
    MAX_KEYS,
    MAX_KEYS_IN_MEMORY,
    PRUNE_EVERY,
    KeyStore,
    arguments_digest,
    check_key,
    request_id_for,
)
from hermesx.gateway.problems import Problem, problem_response, status_for_kind
from hermesx.gateway.view import AtomRow, NodeRow, Reading, diff_readings


def test_a_key_and_the_same_arguments_give_the_same_request_id() -> None:
    one = request_id_for("order-1", arguments_digest("incr", {"a": 1, "b": [2, 3]}))
    again = request_id_for("order-1", arguments_digest("incr", {"b": [2, 3], "a": 1}))
    assert one == again
    assert len(one) <= MAX_REQUEST_ID_CHARS
    assert request_id_for("order-1", arguments_digest("incr", {"a": 2})) != one
    assert request_id_for("order-1", arguments_digest("decr", {"a": 1, "b": [2, 3]})) != one
    assert request_id_for("order-2", arguments_digest("incr", {"a": 1, "b": [2, 3]})) != one


@pytest.mark.parametrize("key", ["", "with space", "x" * 256, "tab\tkey", "é"])
def test_unusable_keys_are_refused(key: str) -> None:
    with pytest.raises(Problem) as caught:
        check_key(key)
    assert caught.value.kind == "bad_idempotency_key"
    assert check_key("a-Key_1:2.3") == "a-Key_1:2.3"


def test_a_key_reused_with_other_arguments_is_refused_also_after_a_restart(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "keys.sqlite"
    store = KeyStore(path)
    store.claim("s1:" + "0" * 32, "k", "digest-a")
    store.claim("s1:" + "0" * 32, "k", "digest-a")  # the same request again: fine
    store.claim("s1:" + "1" * 32, "k", "digest-b")  # another atom's key of the same name
    store.close()
    reopened = KeyStore(path)
    with pytest.raises(Problem) as caught:
        reopened.claim("s1:" + "0" * 32, "k", "digest-b")
    assert caught.value.kind == "idempotency_key_reused"
    assert status_for_kind(caught.value.kind) == 422
    reopened.close()
    # A key older than what is kept may be used anew.
    forgetful = KeyStore(path, keep_seconds=0.0)
    forgetful.claim("s1:" + "0" * 32, "k", "digest-b")
    forgetful.close()


def test_the_keys_a_gateway_keeps_are_bounded() -> None:
    # Every call with a new key adds one: a caller must not grow the gateway without end.
    assert KeyStore(None)._most == MAX_KEYS_IN_MEMORY < MAX_KEYS
    store = KeyStore(None, most=50)
    for n in range(3 * PRUNE_EVERY):
        store.claim("s1:" + "0" * 32, f"key-{n}", "digest")
    assert len(store) <= 50 + PRUNE_EVERY
    # The newest keys are the ones kept: a retry of the latest call is still recognised.
    with pytest.raises(Problem):
        store.claim("s1:" + "0" * 32, f"key-{3 * PRUNE_EVERY - 1}", "other")
    store.close()


def test_errors_become_problem_documents_with_their_kind_and_status() -> None:
    reply = problem_response(NameNotFoundError("no atom is named 'c9'"))
    assert reply.status_code == 404
    assert reply.media_type == "application/problem+json"
    body = json.loads(bytes(reply.body))
    assert body["kind"] == "not_found" and body["detail"] == "no atom is named 'c9'"
    assert problem_response(UnreachableError("down")).status_code == 503
    unknown = problem_response(OutcomeUnknownError("lost", request_id="hx1.x"))
    assert unknown.status_code == 504
    assert json.loads(bytes(unknown.body))["request_id"] == "hx1.x"
    assert problem_response(Problem("too_large", "big")).status_code == 413
    assert status_for_kind("method") == 404
    assert status_for_kind("configuration") == 400
    assert status_for_kind("deadline") == 504


def _node(name: str, incarnation: str = "01", fenced: bool = False) -> NodeRow:
    return NodeRow(name, "127.0.0.1:1", (), incarnation, True, fenced, 0, 0, None)


def _atom(node: str | None, age: int, *, dormant: bool = False, storesite: str = "s1") -> AtomRow:
    return AtomRow("s1:" + "a" * 32, "c1", node, age, dormant, storesite, {})


def _kinds(before: Reading, after: Reading) -> list[str]:
    return [e["kind"] for e in diff_readings(before, after)]


def test_the_console_events_come_from_comparing_readings() -> None:
    three = {n: _node(n) for n in ("n1", "n2", "n3")}
    guid = "s1:" + "a" * 32
    empty = Reading(0, three, {})
    on_n1 = Reading(1, three, {guid: _atom("n1", 1)})
    assert _kinds(empty, on_n1) == ["create"]
    on_n2 = Reading(2, three, {guid: _atom("n2", 3)})
    assert _kinds(on_n1, on_n2) == ["migrate"]
    without_n2 = {n: r for n, r in three.items() if n != "n2"}
    recovered = Reading(3, without_n2, {guid: _atom("n3", 4)})
    assert _kinds(on_n2, recovered) == ["leave", "recover"]
    dormant = Reading(4, without_n2, {guid: _atom(None, 4, dormant=True)})
    assert _kinds(recovered, dormant) == ["passivate"]
    active = Reading(5, without_n2, {guid: _atom("n1", 5)})
    assert _kinds(dormant, active) == ["activate"]
    homed = Reading(6, without_n2, {guid: _atom("n1", 5, storesite="s2")})
    assert _kinds(active, homed) == ["storesite move"]
    fenced = Reading(7, {**without_n2, "n1": _node("n1", fenced=True)}, homed.atoms)
    assert _kinds(homed, fenced) == ["fence"]
    assert _kinds(fenced, homed) == ["unfence"]
    restarted = Reading(8, {**without_n2, "n3": _node("n3", "02")}, homed.atoms)
    assert _kinds(homed, restarted) == ["join"]
    assert _kinds(homed, homed) == []
