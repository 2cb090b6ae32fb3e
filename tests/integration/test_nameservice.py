"""The name service against a real ZooKeeper: Radon's naming requirements, caching, faults."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from hermesx.testing.plugin import started_nameservice
from hermesx.testing.reaper import tethered
from hermesx.testing.wait import wait_until
from nameservice import (
    InvalidNameError,
    InvalidPatternError,
    Member,
    NameNotFoundError,
    NameService,
    NameTakenError,
    NoQuorumError,
)
from nameservice.zookeeper import ZooKeeperServer, free_port

pytestmark = pytest.mark.integration

GUID_A = "s1:" + "a" * 32
GUID_B = "s1:" + "b" * 32
GUID_C = "s2:" + "c" * 32


@pytest.fixture
def other(zk_server: ZooKeeperServer, cluster_name: str) -> Iterator[NameService]:
    """A second client of the same cluster, with its own session (another process's view)."""
    with started_nameservice(zk_server, cluster_name) as service:
        yield service


# --- Radon's naming requirements -------------------------------------------


def test_runtime_node_names_are_unique_among_live_nodes(
    nameservice: NameService, other: NameService
) -> None:
    first = nameservice.register_node("n1", "127.0.0.1:7001", tags=["gpu"], data={"pid": 42})
    with pytest.raises(NameTakenError, match=r"'n1'.*127\.0\.0\.1:7001"):
        other.register_node("n1", "127.0.0.1:7002")
    second = other.register_node("n2", "127.0.0.1:7002")
    # Each registration's incarnation is the session that owns it.
    assert first != second
    assert other.nodes() == {
        "n1": Member("n1", "127.0.0.1:7001", ("gpu",), {"pid": 42}, incarnation=first),
        "n2": Member("n2", "127.0.0.1:7002", incarnation=second),
    }
    assert other.node_incarnation("n1") == first
    # A name frees up when its holder's session ends.
    nameservice.close()
    wait_until(lambda: "n1" not in other.nodes(), 1.0, '"n1" not in other.nodes()')
    assert other.node_incarnation("n1") is None
    # Registered again under the same name and address: another incarnation.
    again = other.register_node("n1", "127.0.0.1:7001")
    assert again not in (first, "")
    assert other.nodes()["n1"].incarnation == again == other.node_incarnation("n1")


def test_storesites_register_like_nodes(nameservice: NameService, other: NameService) -> None:
    incarnation = nameservice.register_storesite("s1", "127.0.0.1:7100", data={"pid": 7})
    with pytest.raises(NameTakenError, match="storesite name 's1'"):
        other.register_storesite("s1", "127.0.0.1:7101")
    assert other.storesites() == {
        "s1": Member("s1", "127.0.0.1:7100", (), {"pid": 7}, incarnation=incarnation)
    }


def test_atom_names_bind_resolve_unbind(nameservice: NameService) -> None:
    nameservice.bind("voucher", GUID_A)
    assert nameservice.resolve("voucher") == GUID_A
    nameservice.bind("voucher", GUID_A)  # idempotent for the same atom
    with pytest.raises(NameTakenError, match=f"'voucher' is already bound to {GUID_A}"):
        nameservice.bind("voucher", GUID_B)
    nameservice.unbind("voucher")
    with pytest.raises(NameNotFoundError, match="'voucher'"):
        nameservice.resolve("voucher")
    with pytest.raises(NameNotFoundError):
        nameservice.unbind("voucher")


def test_a_name_is_global_in_its_cluster_and_only_there(
    zk_server: ZooKeeperServer, nameservice: NameService, other: NameService, cluster_name: str
) -> None:
    nameservice.bind("ledger", GUID_A)
    with pytest.raises(NameTakenError):
        other.bind("ledger", GUID_B)
    # Another cluster on the same ZooKeeper has its own name space.
    with NameService(zk_server.connect_string, cluster_name + "-other") as elsewhere:
        with pytest.raises(NameNotFoundError):
            elsewhere.resolve("ledger")
        elsewhere.bind("ledger", GUID_B)
        assert elsewhere.resolve("ledger") == GUID_B
    assert other.resolve("ledger") == GUID_A


def test_lookup_by_name_needs_no_knowledge_of_the_node(
    nameservice: NameService, other: NameService
) -> None:
    # The node that created the atom registered and bound it; a client that
    # knows no node finds the atom's GUID by name alone.
    nameservice.register_node("n7", "127.0.0.1:7007")
    nameservice.bind("counter", GUID_C)
    assert other.resolve("counter") == GUID_C
    assert other.names() == {"counter": GUID_C}
    # Where the atom lives may change; its name keeps resolving to the GUID.
    nameservice.close()
    assert other.resolve("counter") == GUID_C


def test_one_name_and_many_scoped_aliases_per_atom(
    nameservice: NameService, other: NameService
) -> None:
    nameservice.bind("printer-main", GUID_A)
    nameservice.alias_add("office", "printer", GUID_A)
    nameservice.alias_add("office", "laser", GUID_A)
    nameservice.alias_add("floor-2", "printer", GUID_A)
    assert other.aliases("office") == {"laser": [GUID_A], "printer": [GUID_A]}
    assert other.aliases("floor-2") == {"printer": [GUID_A]}
    assert other.lookup("laser", scope="office") == [GUID_A]
    assert other.resolve("printer-main") == GUID_A
    nameservice.alias_add("office", "laser", GUID_A)  # idempotent
    assert other.aliases("office")["laser"] == [GUID_A]


def test_an_alias_is_a_scope_and_value_pair(nameservice: NameService, other: NameService) -> None:
    nameservice.alias_add("billing", "queue", GUID_A)
    nameservice.alias_add("shipping", "queue", GUID_B)
    nameservice.alias_add("shipping", "queue", GUID_C)  # an alias may name several atoms
    assert other.lookup("queue", scope="billing", all=True) == [GUID_A]
    assert other.lookup("queue", scope="shipping", all=True) == [GUID_B, GUID_C]
    nameservice.alias_remove("shipping", "queue", GUID_B)
    assert other.lookup("queue", scope="shipping", all=True) == [GUID_C]
    assert other.lookup("queue", scope="billing", all=True) == [GUID_A]
    with pytest.raises(NameNotFoundError, match="no alias 'queue' in scope 'shipping'"):
        other.alias_remove("shipping", "queue", GUID_B)
    nameservice.alias_remove("shipping", "queue", GUID_C)
    assert other.aliases("shipping") == {}
    assert other.lookup("queue", scope="shipping", all=True) == []


def test_any_and_all_pattern_lookup(nameservice: NameService, other: NameService) -> None:
    for i, guid in enumerate((GUID_A, GUID_B, GUID_C)):
        nameservice.bind(f"worker-{i}", guid)
    nameservice.bind("boss", GUID_A)
    assert other.lookup("worker-.*", all=True) == [GUID_A, GUID_B, GUID_C]
    one = other.lookup("worker-.*")
    assert len(one) == 1 and one[0] in (GUID_A, GUID_B, GUID_C)
    # Names matched twice (boss, worker-0 -> GUID_A) give the atom once.
    assert other.lookup("boss|worker-0", all=True) == [GUID_A]
    assert other.lookup("nobody.*", all=True) == []
    assert other.lookup("nobody.*") == []


def test_pattern_lookup_on_names_and_on_aliases(
    nameservice: NameService, other: NameService
) -> None:
    nameservice.bind("sensor-1", GUID_A)
    nameservice.bind("sensor-2", GUID_B)
    nameservice.alias_add("lab", "thermo-x", GUID_B)
    nameservice.alias_add("lab", "thermo-y", GUID_C)
    assert other.lookup_names("sensor-[0-9]", all=True) == [
        ("sensor-1", GUID_A),
        ("sensor-2", GUID_B),
    ]
    assert other.lookup_names("sensor-[0-9]") == [("sensor-1", GUID_A)]
    assert other.lookup("thermo-.*", scope="lab", all=True) == [GUID_B, GUID_C]
    # Names and aliases are separate spaces: a name pattern finds no alias.
    assert other.lookup("thermo-.*", all=True) == []
    assert other.lookup("sensor-.*", scope="lab", all=True) == []
    assert other.lookup(".*", scope="no-such-scope", all=True) == []


# --- caching and watches -----------------------------------------------------


def test_watches_refresh_the_cache_within_a_second(
    nameservice: NameService, other: NameService
) -> None:
    nameservice.bind("moving", GUID_A)
    assert other.resolve("moving") == GUID_A  # now cached
    with pytest.raises(NameNotFoundError):
        other.resolve("later")  # the absence is cached too
    nameservice.unbind("moving")
    nameservice.bind("moving", GUID_B)
    nameservice.bind("later", GUID_C)
    wait_until(lambda: other.resolve("moving") == GUID_B, 1.0, 'other.resolve("moving") == GUID_B')
    wait_until(
        lambda: other.names().get("later") == GUID_C, 1.0, 'other.names().get("later") == GUID_C'
    )
    assert other.lookup("later") == [GUID_C]
    assert other.lookup("zz.*", scope="s", all=True) == []
    nameservice.alias_add("s", "zz1", GUID_A)
    wait_until(
        lambda: other.lookup("zz.*", scope="s", all=True) == [GUID_A],
        1.0,
        'other.lookup("zz.*", scope="s", all=True) == [GUID_A]',
    )
    assert other.cache_is_current()


def test_cached_resolve_answers_without_zookeeper(zk_server: ZooKeeperServer) -> None:
    server = ZooKeeperServer()
    server.start()
    try:
        with NameService(server.connect_string, "offline", timeout=1.0) as service:
            service.bind("kept", GUID_A)
            assert service.resolve("kept") == GUID_A
            server.kill()
            # The cached answer needs no round trip; an uncached one fails cleanly.
            assert service.resolve("kept") == GUID_A
            with pytest.raises(NoQuorumError, match="did not answer within 1s"):
                service.resolve("never-seen")
    finally:
        server.stop()


def test_node_watch_sees_joins_and_leaves(nameservice: NameService, other: NameService) -> None:
    seen: list[list[str]] = []
    calls = threading.Event()

    def on_change(members: dict[str, Member]) -> None:
        seen.append(sorted(members))
        calls.set()

    other.watch_nodes(on_change)
    assert seen == [[]]  # once at once
    nameservice.register_node("n1", "127.0.0.1:7001")
    wait_until(lambda: seen[-1] == ["n1"], 1.0, 'seen[-1] == ["n1"]')
    nameservice.register_node("n2", "127.0.0.1:7002")
    wait_until(lambda: seen[-1] == ["n1", "n2"], 1.0, 'seen[-1] == ["n1", "n2"]')
    nameservice.close()
    wait_until(lambda: seen[-1] == [], 1.0, "seen[-1] == []")
    assert other.wait_cache_current(1.0)


def test_watch_callbacks_may_call_back_into_the_name_service(
    nameservice: NameService, other: NameService
) -> None:
    addresses: list[str] = []

    def on_change(members: dict[str, Member]) -> None:
        if "n1" in members:
            # Re-entrant call from the callback: must not deadlock.
            addresses.append(other.nodes()["n1"].address)

    other.watch_nodes(on_change)
    nameservice.register_node("n1", "127.0.0.1:7001")
    wait_until(lambda: addresses == ["127.0.0.1:7001"], 2.0, 'addresses == ["127.0.0.1:7001"]')


# --- sessions and faults -----------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys, time
    from nameservice import NameService
    ns = NameService(sys.argv[1], sys.argv[2], session_timeout=2.0)
    ns.start()
    ns.register_node("doomed", "127.0.0.1:9", data={"pid": 0})
    print("registered", flush=True)
    time.sleep(60)  # a deliberate hold: the test kills this process meanwhile
    """
)


def test_killed_process_registration_vanishes_after_session_expiry(
    zk_server: ZooKeeperServer, nameservice: NameService, cluster_name: str
) -> None:
    child = tethered(
        [sys.executable, "-c", _CHILD, zk_server.connect_string, cluster_name],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "registered"
        assert "doomed" in nameservice.nodes()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        killed_at = time.monotonic()
        # Session timeout 2 s, plus slack for ZooKeeper's expiry ticks.
        wait_until(
            lambda: "doomed" not in nameservice.nodes(),
            2.0 + 3.0,
            '"doomed" not in nameservice.nodes()',
        )
        assert time.monotonic() - killed_at > 1.0, "vanished before the session could expire"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


def test_state_listener_hears_suspended_when_zookeeper_dies() -> None:
    server = ZooKeeperServer()
    server.start()
    states: list[str] = []
    try:
        with NameService(server.connect_string, "fence", timeout=1.0) as service:
            service.add_state_listener(states.append)
            assert service.state == "connected"
            server.kill()
            wait_until(lambda: "suspended" in states, 5.0, '"suspended" in states')
            assert service.state in ("suspended", "lost")
            assert not service.cache_is_current()
    finally:
        server.stop()


def test_start_without_a_server_fails_with_no_quorum_in_time() -> None:
    hosts = f"127.0.0.1:{free_port()}"
    service = NameService(hosts, "nobody", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(NoQuorumError, match=f"name service at {hosts} did not answer within 1s"):
        service.start()
    assert time.monotonic() - started < 1.0 + 3.0
    service.close()


# --- bad input ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "x" * 129, "a/b", "../etc", " lead", "-x"])
def test_bad_names_are_refused(nameservice: NameService, name: str) -> None:
    with pytest.raises(InvalidNameError):
        nameservice.bind(name, GUID_A)
    with pytest.raises(InvalidNameError):
        nameservice.resolve(name)
    with pytest.raises(InvalidNameError):
        nameservice.register_node(name, "127.0.0.1:1")
    with pytest.raises(InvalidNameError):
        nameservice.alias_add("scope", name, GUID_A)
    with pytest.raises(InvalidNameError):
        nameservice.alias_add(name, "alias", GUID_A)
    assert nameservice.names() == {}


def test_bad_guid_address_and_cluster_are_refused(nameservice: NameService) -> None:
    with pytest.raises(InvalidNameError, match="GUID"):
        nameservice.bind("ok", "a/b")
    with pytest.raises(InvalidNameError, match="not host:port"):
        nameservice.register_node("n1", "nowhere")
    with pytest.raises(InvalidNameError, match="may not set"):
        nameservice.register_node("n1", "127.0.0.1:1", data={"address": "x"})
    with pytest.raises(InvalidNameError, match="cluster name"):
        NameService("127.0.0.1:1", "a/b")


def test_invalid_regex_is_a_clear_error(nameservice: NameService) -> None:
    nameservice.bind("a1", GUID_A)
    with pytest.raises(InvalidPatternError, match=r"'\(unclosed'"):
        nameservice.lookup("(unclosed")
    with pytest.raises(InvalidPatternError, match="longer than 256"):
        nameservice.lookup_names("a" * 300)
    with pytest.raises(InvalidPatternError):
        nameservice.lookup(r"(a)\1", scope="s")


def test_pathological_pattern_over_many_names_answers(nameservice: NameService) -> None:
    for i in range(200):
        nameservice.bind("a" * 60 + f"-{i:03d}", GUID_A)
    nameservice.bind("a" * 30 + "b", GUID_B)
    assert nameservice.lookup("(a*)*b", all=True) == [GUID_B]
    assert nameservice.lookup("(a|aa)*-(0|1)*", all=True) == [GUID_A]


def test_member_data_round_trips_as_json(nameservice: NameService, other: NameService) -> None:
    nameservice.register_node("n1", "127.0.0.1:7001", ("a", "b"), {"pid": 1, "meta": {"k": [1]}})
    member = other.nodes()["n1"]
    assert member.tags == ("a", "b")
    assert json.loads(json.dumps(dict(member.data))) == {"pid": 1, "meta": {"k": [1]}}


def test_cache_is_refilled_after_reconnecting(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "zk"
    server = ZooKeeperServer(data_dir=data_dir)
    server.start()
    port = server.port
    states: list[str] = []
    try:
        with NameService(server.connect_string, "rejoin", session_timeout=8.0) as service:
            service.add_state_listener(states.append)
            service.bind("kept", GUID_A)
            assert service.resolve("kept") == GUID_A
            server.kill()
            wait_until(lambda: service.state == "suspended", 5.0, 'service.state == "suspended"')
            assert service.resolve("kept") == GUID_A  # served while suspended
            server = ZooKeeperServer(port=port, data_dir=data_dir)
            server.start()
            wait_until(lambda: service.state == "connected", 10.0, 'service.state == "connected"')
            with NameService(server.connect_string, "rejoin") as writer:
                writer.unbind("kept")
                writer.bind("kept", GUID_B)
            # The watches lost with the connection were set again.
            wait_until(
                lambda: service.resolve("kept") == GUID_B, 1.0, 'service.resolve("kept") == GUID_B'
            )
            wait_until(lambda: states[-1:] == ["connected"], 1.0, 'states[-1:] == ["connected"]')
            assert "suspended" in states
    finally:
        server.stop()
