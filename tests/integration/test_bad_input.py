"""Bad input against a live cluster: every case is one clear error, and everything keeps serving.

Hostile modules through Client.create, misbehaving atoms on a live node,
oversize and malformed arguments, garbage on the gRPC ports, unknown names,
hostile lookup patterns and forwarding loops (docs/DESIGN.md §3 Guards, §4, §7, §9).
After each case a following call proves the node, the atom and the storesite
still serve.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
from collections.abc import Callable

import grpc
import pytest
import wasmtime

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.errors import (
    AtomTrapError,
    BadModuleError,
    ConfigurationError,
    DeadlineExceededError,
    HermesError,
    InvalidNameError,
    InvalidPatternError,
    MemoryLimitError,
    MethodError,
    NameNotFoundError,
    PayloadTooLargeError,
    UnreachableError,
)
from hermesx.core.identity import TAD
from hermesx.local.cluster import LocalCluster
from hermesx.routing.naming import Naming
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.storesite_client import StoresiteClient
from hermesx.rpc.wire import TLSIdentity, open_channel
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration

_ATOM = """(module {imports}
  (memory (export "memory") {pages})
  (func (export "hx_abi_version") (result i32) (i32.const 1))
  (func (export "hx_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "hx_invoke") (param i32 i32 i32 i32) (result i32) (i32.const 0))
  {extra})"""


def wat_atom(imports: str = "", pages: int = 1, extra: str = "") -> bytes:
    return bytes(wasmtime.wat2wasm(_ATOM.format(imports=imports, pages=pages, extra=extra)))


def one_line(err: BaseException) -> str:
    text = str(err)
    assert text and "\n" not in text, f"not a one-line error: {text!r}"
    return text


@pytest.fixture
def resident(client: Client, atoms: dict[str, pathlib.Path], unique_name: str) -> str:
    """A counter on n1 that must keep answering whatever else happens on its node."""
    name = f"{unique_name}-resident"
    client.create(atoms["counter"], name=name, on="n1")
    return name


def still_serves(client: Client, resident: str) -> None:
    before = client.atom(resident).get()
    assert client.atom(resident).incr(1) == before + 1


# -- hostile modules through Client.create ------------------------------------------

_HOSTILE: dict[str, tuple[Callable[[dict[str, pathlib.Path]], bytes], type[HermesError], str]] = {
    "zero-bytes": (lambda a: b"", BadModuleError, "bad magic"),
    "bad-magic": (lambda a: b"\x7fELF" + bytes(60), BadModuleError, "bad magic"),
    "truncated": (lambda a: a["counter"].read_bytes()[:200], BadModuleError, "module"),
    "missing-hx_invoke": (lambda a: a["noexport"].read_bytes(), BadModuleError, "hx_invoke"),
    "missing-hx_alloc": (
        lambda a: wat_atom().replace(b"hx_alloc", b"hx_allox"),
        BadModuleError,
        "hx_alloc",
    ),
    "missing-memory": (
        lambda a: wat_atom().replace(b"memory", b"memorx"),
        BadModuleError,
        "memory",
    ),
    "import-outside-hx": (
        lambda a: wat_atom(imports='(import "env" "system" (func (param i32)))'),
        BadModuleError,
        "env.system",
    ),
    "memory-over-cap": (lambda a: wat_atom(pages=2000), MemoryLimitError, "cap"),
    "huge-table": (lambda a: wat_atom(extra="(table 50000000 funcref)"), BadModuleError, "table"),
    "start-traps": (
        lambda a: wat_atom(extra="(func $s (unreachable)) (start $s)"),
        BadModuleError,
        "start function",
    ),
    "start-recurses": (
        lambda a: wat_atom(extra="(func $s (call $s)) (start $s)"),
        BadModuleError,
        "start function",
    ),
    "start-loops-forever": (
        lambda a: wat_atom(extra="(func $s (loop $l (br $l))) (start $s)"),
        BadModuleError,
        "deadline",
    ),
}


@pytest.mark.parametrize("case", sorted(_HOSTILE))
def test_hostile_module_is_refused_with_one_line_and_frees_its_name(
    client: Client,
    atoms: dict[str, pathlib.Path],
    resident: str,
    unique_name: str,
    case: str,
) -> None:
    build, kind, needle = _HOSTILE[case]
    with pytest.raises(kind) as info:
        client.create(build(atoms), name=unique_name, on="n1")
    message = one_line(info.value)
    assert needle in message
    assert "module " in message  # names the module (hash prefix)
    still_serves(client, resident)
    # The refused create left no name behind: the name is free for a good module.
    client.create(atoms["counter"], name=unique_name, on="n1")
    assert client.atom(unique_name).incr(2) == 2


def test_module_far_over_any_sane_size_is_refused_before_it_is_sent(
    client: Client, resident: str
) -> None:
    giant = b"\x00asm\x01\x00\x00\x00" + bytes(257 * 2**20)
    with pytest.raises(PayloadTooLargeError) as info:
        client.create(giant, on="n1")
    assert "n1" in one_line(info.value)
    del giant
    still_serves(client, resident)


# -- misbehaving atoms on a live node ---------------------------------------------------


@pytest.mark.parametrize(
    ("atom", "method", "args", "kind"),
    [
        ("trap", "boom", None, AtomTrapError),
        ("spin", "spin", None, DeadlineExceededError),
    ],
)
def test_a_failing_call_leaves_the_atom_and_its_node_serving(
    client: Client,
    atoms: dict[str, pathlib.Path],
    resident: str,
    unique_name: str,
    atom: str,
    method: str,
    args: object,
    kind: type[HermesError],
) -> None:
    guid = client.create(atoms[atom], name=unique_name, on="n1")
    with pytest.raises(kind) as info:
        client.call(unique_name, method, args)
    assert guid in one_line(info.value) and method in str(info.value)
    assert client.atom(unique_name).ok() == 1
    still_serves(client, resident)


def test_memory_cap_hit_of_an_on_request_atom_leaves_it_serving(
    client: Client, atoms: dict[str, pathlib.Path], resident: str, unique_name: str
) -> None:
    guid = client.create(atoms["memhog"], name=unique_name, on="n1", checkpoint="on-request")
    with pytest.raises(MemoryLimitError) as info:
        client.atom(unique_name).grow_trap(2000)
    assert guid in one_line(info.value) and "cap" in str(info.value)
    assert client.atom(unique_name).pages() == 1024  # 64 MiB: at the cap, and answering
    still_serves(client, resident)


def test_memory_cap_hit_of_a_durable_atom_leaves_it_serving(
    client: Client, atoms: dict[str, pathlib.Path], resident: str, unique_name: str
) -> None:
    client.create(atoms["memhog"], name=unique_name, on="n2")
    with pytest.raises(MemoryLimitError):
        client.atom(unique_name).grow_trap(2000)
    assert client.atom(unique_name).pages() == 1024


# -- arguments ---------------------------------------------------------------------------


def test_arguments_one_byte_over_the_limit_are_refused_by_name(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    guid = client.create(atoms["echo"], name=unique_name, on="n2")
    limit = 4 * 2**20  # the nodes' default max_payload_bytes
    over = codec.pack(b"x" * (limit + 1 - 5))  # bin32: 5 header bytes
    assert len(over) == limit + 1
    with pytest.raises(PayloadTooLargeError) as info:
        client.invoke(unique_name, "echo", over)
    assert guid in one_line(info.value) and str(limit) in str(info.value)
    at_limit = codec.pack(b"x" * (limit - 5))
    assert client.invoke(unique_name, "echo", at_limit).result == at_limit


@pytest.mark.parametrize(
    "args",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\xdd\xff\xff\xff\xff\x01",  # array32 claiming 4 G items
        b"\x93\x01",  # array of 3 with one item
        b"\x91" * 5000 + b"\xc0",  # 5000 nested arrays
        b"\xd9",  # str8 without its length
        bytes(range(256)),
    ],
    ids=["c1", "str32", "array32", "short-array", "deep", "cut-header", "all-bytes"],
)
def test_malformed_msgpack_arguments_are_a_method_error_not_a_trap(
    client: Client, atoms: dict[str, pathlib.Path], unique_name: str, args: bytes
) -> None:
    guid = client.create(atoms["kvstore"], name=unique_name, on="n3")
    with pytest.raises(MethodError) as info:
        client.invoke(unique_name, "put", args)
    assert guid in one_line(info.value)
    client.atom(unique_name).put(["k", 1])
    assert client.atom(unique_name).get("k") == 1


def test_method_names_that_do_not_exist_or_are_hostile(client: Client, resident: str) -> None:
    # Empty, over-long or unencodable names are refused by the client before any
    # round trip; the others reach the atom, which names the unknown method.
    for method in ["", " ", "\x00incr", "incr\x00", "é" * 100, "m" * 100_000, "\udc80"]:
        with pytest.raises((MethodError, PayloadTooLargeError, ConfigurationError)) as info:
            client.invoke(resident, method, codec.pack(1))
        one_line(info.value)
    still_serves(client, resident)


# -- unknown atoms, nodes and names ---------------------------------------------------------


def test_unknown_guid_on_a_live_storesite_is_not_found(client: Client) -> None:
    with pytest.raises(NameNotFoundError, match="s1"):
        client.invoke("s1:" + "f" * 32, "get", codec.pack(None))


@pytest.mark.parametrize("target", ["", "bad/name", "a" * 200, "..", "x y", "s1:" + "F" * 32])
def test_invalid_atom_names_are_refused_before_any_rpc(client: Client, target: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        client.invoke(target, "get", codec.pack(None))
    one_line(info.value)


def test_migrate_to_an_unknown_node_is_clear_and_leaves_the_atom(
    client: Client, resident: str
) -> None:
    with pytest.raises(NameNotFoundError, match="n9"):
        client.migrate(resident, "n9")
    with pytest.raises((NameNotFoundError, InvalidNameError), match=r"\.\./n1"):
        client.migrate(resident, "../n1")
    assert client.locate(resident).node == "n1"
    still_serves(client, resident)


def test_stash_of_an_unknown_node_is_unreachable(client: Client, resident: str) -> None:
    with pytest.raises(UnreachableError, match="n9"):
        client.stash_of("n9", resident)


# -- lookups with hostile patterns -------------------------------------------------------------


def test_pathological_patterns_answer_in_linear_time_or_are_refused(
    cluster: LocalCluster, client: Client, resident: str
) -> None:
    guid = client.guid_of(resident)
    # Names that make a backtracking engine take 2^30 steps on (a*)*b. Clients
    # only read the name service: bind them as a member (a node) would.
    names = [f"{'a' * 30}{i}c" for i in range(300)]
    member = Naming(cluster.zk, cluster.name, tls=cluster.tls_dir)
    member.start()
    try:
        for name in names:
            member.bind(name, guid)
    finally:
        member.close()
    assert client.lookup_names("(a*)*b", all=True) == []
    assert len(client.lookup_names("(a*)*[0-9]+c", all=True)) == len(names)
    assert client.lookup("(a*)*b", scope="team", all=True) == []
    for bad in ["(", "[a-", "a{2,1}", "\\", "(?P<x", "a" * 10240, "(a{100}){100}{100}"]:
        with pytest.raises(InvalidPatternError) as info:
            client.lookup_names(bad, all=True)
        one_line(info.value)
        with pytest.raises(InvalidPatternError):
            client.lookup(bad, scope="team", all=True)
    still_serves(client, resident)


# -- forwarding loops -------------------------------------------------------------------------


def _loop(tester: Client, guid: str, base: int) -> None:
    """Hostile stashes n1 -> n2 -> n1, both claiming to be newer than the truth."""
    tester.node_client.stash_put(tester.node_member("n1"), guid, TAD("n2", base))
    tester.node_client.stash_put(tester.node_member("n2"), guid, TAD("n1", base + 1))


def test_a_huge_requested_hop_limit_cannot_hold_a_loop_open(
    cluster: LocalCluster,
    client: Client,
    tester: Client,
    atoms: dict[str, pathlib.Path],
    resident: str,
) -> None:
    guid = client.create(atoms["counter"], on="n3")
    _loop(tester, guid, 1000)
    with Client(cluster.zk, cluster.name, hop_limit=10_000, timeout=20.0) as greedy:
        outcome = greedy.invoke(guid, "incr", codec.pack(1), via="n1", trace=True)
    assert codec.unpack(outcome.result) == 1
    events = [(h.node, h.event) for h in outcome.trace]
    assert events[-1] == ("n3", "ran"), events
    # Each node forwarded at most its own hop limit, not the 10,000 asked for.
    assert sum(1 for _, e in events if e == "forward") <= 20, events
    still_serves(client, resident)


def test_a_node_pointing_at_itself_falls_back_to_the_storesite(
    client: Client, tester: Client, atoms: dict[str, pathlib.Path]
) -> None:
    guid = client.create(atoms["counter"], on="n2")
    tester.node_client.stash_put(tester.node_member("n1"), guid, TAD("n1", 99))
    outcome = client.invoke(guid, "incr", codec.pack(5), via="n1", trace=True)
    assert codec.unpack(outcome.result) == 5
    assert outcome.trace[-1].node == "n2" and outcome.trace[-1].event == "ran"


def test_an_atom_calling_through_a_forwarding_loop_gets_its_answer(
    client: Client, tester: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    target = f"{unique_name}-target"
    guid = client.create(atoms["counter"], name=target, on="n3")
    client.create(atoms["caller"], name=unique_name, on="n1")
    _loop(tester, guid, 2000)
    assert client.atom(unique_name).call([target, "incr", 7]) == 7
    assert client.atom(target).get() == 7


def test_a_send_through_a_forwarding_loop_arrives(
    client: Client, tester: Client, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    guid = client.create(atoms["inbox"], name=unique_name, on="n3")
    _loop(tester, guid, 3000)
    client.invoker.stash.force(guid, TAD("n1", 3000))
    client.invoker.send(guid, 1, codec.pack(41))
    # The message is queued at the atom; its handler runs when the atom is idle.
    received = wait_until(
        lambda: client.atom(unique_name).received(), 5.0, "the queued message to be handled"
    )
    assert received == [41]


# -- garbage on the gRPC ports ----------------------------------------------------------------


def _raw(address: str, data: bytes) -> None:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        sock.settimeout(2)
        try:
            while sock.recv(4096):
                pass
        except (TimeoutError, ConnectionError):
            pass


_GARBAGE = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    bytes(range(256)) * 64,
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 4096,
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x01" * 100,
]


def _addresses(client: Client) -> dict[str, str]:
    nodes = client.nodes()
    return {"node": nodes["n1"].address, "storesite": client.naming.storesites()["s1"].address}


def test_raw_tcp_garbage_does_not_stop_node_or_storesite(client: Client, resident: str) -> None:
    for address in _addresses(client).values():
        for data in _GARBAGE:
            _raw(address, data)
    assert client.node_status("n1").name == "n1"
    assert client.locate(resident).node == "n1"
    still_serves(client, resident)


def _cluster_channel(
    client: Client, address: str
) -> contextlib.AbstractContextManager[grpc.Channel]:
    """A channel with the client's cluster certificate (the pool keeps it open)."""
    return contextlib.nullcontext(client.channels.get(address))


def _member_channel(cluster: LocalCluster, address: str) -> grpc.Channel:
    """A channel with node n1's certificate: a member's calls reach every RPC's handler."""
    return open_channel(address, tls=TLSIdentity(cluster.tls_dir, "n1", cluster.name))


@pytest.mark.parametrize("payload", [b"\xff\xff\xff\x07garbage", b"\x0a\xff\xff\xff\xff\x0f", b""])
def test_undecodable_or_empty_requests_get_a_status_on_every_rpc(
    cluster: LocalCluster, client: Client, resident: str, payload: bytes
) -> None:
    for service, address in [
        ("Supervisor", _addresses(client)["node"]),
        ("Storesite", _addresses(client)["storesite"]),
    ]:
        with _member_channel(cluster, address) as channel:
            for method in pb.DESCRIPTOR.services_by_name[service].methods:
                call = channel.unary_unary(
                    f"/{pb.DESCRIPTOR.package}.{service}/{method.name}",
                    request_serializer=lambda b: b,
                    response_deserializer=lambda b: b,
                )
                try:
                    call(payload, timeout=10)
                except grpc.RpcError as exc:
                    assert exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED, method.name
                    # Handlers translate their failures; none escapes unhandled.
                    assert "Exception calling application" not in (exc.details() or ""), (
                        service,
                        method.name,
                        exc.details(),
                    )
    assert client.locate(resident).node == "n1"
    still_serves(client, resident)


def test_storesite_refuses_an_empty_guid_as_invalid(client: Client) -> None:
    address = _addresses(client)["storesite"]
    with _cluster_channel(client, address) as channel:
        locate = channel.unary_unary(
            f"/{pb.DESCRIPTOR.package}.Storesite/Locate",
            request_serializer=pb.GuidRequest.SerializeToString,
            response_deserializer=pb.LocationReply.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            locate(pb.GuidRequest(guid=""), timeout=10)
    assert (info.value.details() or "").startswith("invalid_name: ")


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) // 1024


def test_made_up_guids_asked_of_a_storesite_cost_it_nothing_once_answered(
    cluster: LocalCluster, client: Client
) -> None:
    """Any role may ask a storesite where an atom is (Locate). The storesite kept a lock
    for each GUID ever asked about, made-up ones too: 64 GUIDs of 1 MiB each grew it by
    64 MiB for good (200 by 223 MiB). Each is refused, and nothing of it stays."""
    pid = cluster.procs["storesite-s1"]
    address = client.naming.storesites()["s1"].address
    before = _rss_mib(pid)
    with StoresiteClient(address, sid="s1", channels=client.channels) as site:
        for i in range(64):
            with pytest.raises(HermesError):
                site.locate(f"{i:08d}" + "x" * 2**20)
        with pytest.raises(NameNotFoundError):
            site.locate("s1:" + "e" * 32)  # and it answers as before
    assert _rss_mib(pid) - before < 32, (before, _rss_mib(pid))
