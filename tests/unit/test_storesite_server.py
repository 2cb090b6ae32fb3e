"""The storesite over real gRPC on 127.0.0.1, with small fake supervisors.

See docs/DESIGN.md §4, §5, §6.

The name service is replaced by an in-memory directory; the nodes are fake
Supervisor servicers that record what the storesite asks of them.
"""

from __future__ import annotations

import pathlib
import re
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from hermesx.core.errors import (
    CallTimeoutError,
    MigrationError,
    NameNotFoundError,
    StorageError,
    UnreachableError,
)
from hermesx.core.identity import GUID, TAD
from hermesx.rpc.node_client import NodeClient
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.storesite_client import StoresiteClient
from hermesx.testing.wait import wait_until
from storesite.server import StoresiteServer
from storesite.service import Storesite
from storesite.store import AtomStore


@dataclass(frozen=True, slots=True)
class FakeMember:
    name: str
    address: str
    tags: tuple[str, ...] = ()
    incarnation: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class FakeDirectory:
    members: dict[str, FakeMember] = field(default_factory=dict)
    storesites: dict[str, str] = field(default_factory=dict)
    homes: dict[str, str] = field(default_factory=dict)
    # What ZooKeeper has when the cached view (``members``) lags behind it.
    fresh: dict[str, str | None] = field(default_factory=dict)

    def nodes(self) -> Mapping[str, FakeMember]:
        return dict(self.members)

    def live_incarnation(self, node: str) -> str | None:
        if node in self.fresh:
            return self.fresh[node]
        member = self.members.get(node)
        return member.incarnation if member is not None else None

    def storesite_address(self, sid: str) -> str:
        if sid not in self.storesites:
            raise NameNotFoundError(f"no live storesite {sid}")
        return self.storesites[sid]

    def set_home(self, guid: str, sid: str) -> None:
        self.homes[guid] = sid

    def home(self, guid: str) -> str:
        return self.homes.get(guid) or GUID.parse(guid).home


class FakeSupervisor(pbg.SupervisorServicer):
    """Records activations; ``refuse`` makes it fail them like a real node would."""

    def __init__(self, name: str, load: int) -> None:
        self.name = name
        self.load = load
        self.activations: list[pb.ActivateRequest] = []
        self.confirmed: list[pb.ActivateRequest] = []
        # What Locate reports: GUID -> TAD active here, and the incarnation.
        self.holding: dict[str, TAD] = {}
        self.incarnation = ""
        self.refuse = ""
        self.delay = 0.0
        self._lock = threading.Lock()

    def Activate(
        self, request: pb.ActivateRequest, context: grpc.ServicerContext
    ) -> pb.ActivateReply:
        if request.confirm:  # step 2: the staged copy serves
            with self._lock:
                self.confirmed.append(request)
            return pb.ActivateReply(tad=request.tad, incarnation=self.incarnation)
        if self.delay:
            time.sleep(self.delay)  # the slow node this fake stands for
        if self.refuse:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, self.refuse)
        with self._lock:
            self.activations.append(request)
            self.load += 1
        # A node that does not say which incarnation it is leaves it to the listing.
        return pb.ActivateReply(tad=request.tad, incarnation=self.incarnation)

    def Status(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.NodeStatus:
        return pb.NodeStatus(name=self.name, active_atoms=self.load)

    def Locate(self, request: pb.LocateRequest, context: grpc.ServicerContext) -> pb.LocateReply:
        tad = self.holding.get(request.guid)
        reply = pb.LocateReply(active_here=tad is not None, incarnation=self.incarnation)
        if tad is not None:
            reply.tad.CopyFrom(pb.TAD(node=tad.node, age=tad.age))
        return reply


class Cluster:
    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.directory = FakeDirectory()
        self.nodes: dict[str, FakeSupervisor] = {}
        self._grpc_servers: list[grpc.Server] = []
        self._storesites: list[tuple[StoresiteServer, Storesite, AtomStore]] = []
        self.clients: list[StoresiteClient] = []
        self.activate_timeout = 30.0

    def add_node(self, name: str, load: int = 0, tags: tuple[str, ...] = ()) -> FakeSupervisor:
        servicer = FakeSupervisor(name, load)
        server = grpc.server(futures.ThreadPoolExecutor(4))
        pbg.add_SupervisorServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc_servers.append(server)
        self.nodes[name] = servicer
        self.directory.members[name] = FakeMember(
            name, f"127.0.0.1:{port}", tags, incarnation=f"{name}-1"
        )
        return servicer

    def kill_node(self, name: str) -> None:
        del self.directory.members[name]

    def restart_node(self, name: str, incarnation: str) -> None:
        """The node comes back under its name and address as another incarnation."""
        old = self.directory.members[name]
        self.directory.members[name] = FakeMember(old.name, old.address, old.tags, incarnation)
        self.nodes[name].incarnation = incarnation

    def add_storesite(self, sid: str, **kwargs: int) -> tuple[Storesite, StoresiteClient]:
        store = AtomStore(sid, self.tmp / sid, init=True, **kwargs)
        site = Storesite(
            store,
            self.directory,
            load_ttl=0.0,
            supervisors=NodeClient(activate_timeout=self.activate_timeout),
        )
        server = StoresiteServer(site, "127.0.0.1:0")
        address = server.start()
        self._storesites.append((server, site, store))
        self.directory.storesites[sid] = address
        client = StoresiteClient(address, sid=sid, timeout=10.0)
        self.clients.append(client)
        return site, client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for server, site, store in self._storesites:
            server.stop(0)
            site.close()
            store.close()
        for grpc_server in self._grpc_servers:
            grpc_server.stop(0)


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def register(client: StoresiteClient, node: str, tags: tuple[str, ...] = ()) -> str:
    guid = str(GUID.new(client.sid))
    meta = pb.AtomMeta(name="counter", module_hash="", tags=list(tags))
    client.register_atom(guid, meta, TAD(node, 1), b"snap-1")
    return guid


def test_checkpoints_round_trip_over_grpc(cluster: Cluster) -> None:
    cluster.add_node("n1")
    _, client = cluster.add_storesite("s1")
    guid = register(client, "n1")
    client.put_checkpoint(guid, TAD("n1", 1), b"state-2", seq=2)
    client.put_checkpoint(guid, TAD("n1", 1), b"state-1", seq=1)  # late, ignored
    ck = client.get_checkpoint(guid)
    assert (ck.snapshot, ck.seq, ck.tad, ck.meta.name) == (b"state-2", 2, TAD("n1", 1), "counter")
    digest = client.put_module(b"\0asm")
    assert client.get_module(digest) == b"\0asm"
    assert client.status().atoms == 1
    [info] = client.list_atoms()
    assert (info.guid, info.tad, info.dormant, info.checkpoints) == (guid, TAD("n1", 1), False, 2)


def test_a_checkpoint_sent_in_pieces_is_stored_whole(cluster: Cluster) -> None:
    cluster.add_node("n1")
    _, client = cluster.add_storesite("s1")
    guid = register(client, "n1")
    state = bytes(range(256)) * 12_000  # 3 MB, sent as 1 MiB pieces
    head = pb.CheckpointRequest(guid=guid, tad=pb.TAD(node="n1", age=1), seq=2)
    pieces = [pb.CheckpointPiece(head=head)] + [
        pb.CheckpointPiece(data=state[i : i + 2**20]) for i in range(0, len(state), 2**20)
    ]
    client._stub.PutCheckpointPieces(iter(pieces), timeout=10)
    ck = client.get_checkpoint(guid)
    assert (ck.snapshot, ck.seq) == (state, 2)
    with pytest.raises(grpc.RpcError) as e:
        client._stub.PutCheckpointPieces(iter([pb.CheckpointPiece(data=b"x")]), timeout=10)
    assert "must start with its request" in str(e.value.details())
    assert client.get_checkpoint(guid).snapshot == state


def test_errors_keep_their_kind_and_name_the_atom(cluster: Cluster) -> None:
    cluster.add_node("n1")
    cluster.add_node("n2")
    _, client = cluster.add_storesite("s1", max_checkpoint_bytes=1000)
    unknown = str(GUID.new("s1"))
    with pytest.raises(NameNotFoundError, match=unknown):
        client.get_checkpoint(unknown)
    guid = register(client, "n1")
    client.prepare(guid, TAD("n1", 1), "n2")
    with pytest.raises(MigrationError, match="already moving to n2"):
        client.prepare(guid, TAD("n1", 1), "n2")
    with pytest.raises(StorageError, match=f"checkpoint of atom {guid} is 1001 bytes"):
        client.put_checkpoint(guid, TAD("n1", 1), b"x" * 1001, seq=1)
    with pytest.raises(MigrationError, match="no live node by that name"):
        client.prepare(register(client, "n1"), TAD("n1", 1), "nowhere")


def test_migration_commit_and_abort_over_grpc(cluster: Cluster) -> None:
    cluster.add_node("n1")
    cluster.add_node("n2")
    _, client = cluster.add_storesite("s1")
    guid = register(client, "n1")
    age = client.prepare(guid, TAD("n1", 1), "n2")
    client.abort(guid, age)
    assert client.locate(guid).tad == TAD("n1", 1)
    age2 = client.prepare(guid, TAD("n1", 1), "n2")
    assert age2 > age
    assert client.commit(guid, TAD("n2", age2), b"moved", incarnation="n2-1").tad == TAD("n2", age2)
    assert client.locate(guid).tad == TAD("n2", age2)
    assert client.get_checkpoint(guid).snapshot == b"moved"


def test_locate_activates_dormant_atom_on_least_loaded_node_with_tags(cluster: Cluster) -> None:
    cluster.add_node("busy", load=5, tags=("gpu",))
    idle = cluster.add_node("idle", load=1, tags=("gpu",))
    cluster.add_node("untagged", load=0)
    site, client = cluster.add_storesite("s1")
    guid = register(client, "busy", tags=("gpu",))
    client.passivated(guid, TAD("busy", 1), b"final")
    location = client.locate(guid)
    assert location.tad == TAD("idle", 2)
    assert not location.dormant
    # The record names the incarnation that activated it.
    assert location.incarnation == site.store.get(guid).incarnation == "idle-1"
    [request] = idle.activations
    assert (request.guid, request.snapshot, request.tad.age) == (guid, b"final", 2)
    assert list(request.meta.tags) == ["gpu"]
    # Active now: a second Locate answers without activating again.
    assert client.locate(guid).tad == TAD("idle", 2)
    assert len(idle.activations) == 1


def test_a_node_that_stages_too_slowly_is_given_up_and_its_copy_never_confirmed(
    cluster: Cluster,
) -> None:
    cluster.activate_timeout = 0.5
    slow = cluster.add_node("slow", load=0)
    fast = cluster.add_node("fast", load=3)
    slow.delay = 1.5  # answers after the storesite gave up: a late stage
    site, client = cluster.add_storesite("s1")
    guid = register(client, "fast")
    client.passivated(guid, TAD("fast", 1), b"final")
    location = client.locate(guid)
    # Tried first, timed out, and the next node got the atom at a new age.
    assert location.tad == TAD("fast", 3)
    assert site.store.get(guid).incarnation == "fast-1"
    [confirmation] = fast.confirmed
    assert (confirmation.tad.age, confirmation.incarnation) == (3, "fast-1")
    # The slow node's stage (if its handler ran at all) was for age 2, never confirmed.
    assert [a.tad.age for a in slow.activations if a.guid == guid] in ([], [2])
    # Staging asked for the incarnation the name service lists.
    assert all(a.stage and a.incarnation == "fast-1" for a in fast.activations)
    time.sleep(slow.delay)  # a deliberate window: the late stage lands meanwhile
    assert slow.confirmed == []
    assert client.locate(guid).tad == TAD("fast", 3)


def test_concurrent_locates_activate_a_dormant_atom_once(cluster: Cluster) -> None:
    node = cluster.add_node("n1")
    node.delay = 0.2
    _, client = cluster.add_storesite("s1")
    guid = register(client, "n1")
    client.passivated(guid, TAD("n1", 1), b"final")
    with futures.ThreadPoolExecutor(6) as pool:
        tads = list(pool.map(lambda _: client.locate(guid).tad, range(6)))
    assert len(node.activations) == 1
    assert set(tads) == {TAD("n1", 2)}


def test_activation_refused_by_one_node_goes_to_the_next(cluster: Cluster) -> None:
    first = cluster.add_node("a", load=0)
    first.refuse = "bad_module: node a cannot load module"
    second = cluster.add_node("b", load=3)
    _, client = cluster.add_storesite("s1")
    guid = register(client, "a")
    client.passivated(guid, TAD("a", 1), b"final")
    # Age 2 went to the refused attempt and is never reused.
    assert client.locate(guid).tad == TAD("b", 3)
    assert len(second.activations) == 1


def test_dormant_atom_without_fitting_node_stays_dormant(cluster: Cluster) -> None:
    cluster.add_node("n1")
    site, client = cluster.add_storesite("s1")
    guid = register(client, "n1", tags=("gpu",))
    client.passivated(guid, TAD("n1", 1), b"final")
    with pytest.raises(UnreachableError, match=r"no live node with tags \['gpu'\]"):
        client.locate(guid)
    assert site.store.get(guid).dormant
    gpu = cluster.add_node("g1", tags=("gpu",))
    assert client.locate(guid).tad.node == "g1"
    assert len(gpu.activations) == 1


def test_node_death_recovers_its_atoms_on_live_nodes(cluster: Cluster) -> None:
    cluster.add_node("doomed")
    survivor = cluster.add_node("survivor")
    site, client = cluster.add_storesite("s1")
    site.on_nodes(cluster.directory.nodes())
    lost = [register(client, "doomed") for _ in range(5)]
    kept = register(client, "survivor")
    client.put_checkpoint(lost[0], TAD("doomed", 1), b"latest", seq=1)
    age = client.prepare(lost[1], TAD("doomed", 1), "survivor")  # dies mid-move

    cluster.kill_node("doomed")
    site.on_nodes(cluster.directory.nodes())
    wait_until(lambda: len(survivor.activations) == 5, 4.0, "five recoveries")
    # The location is recorded once the node has answered the activation.
    wait_until(
        lambda: all(site.store.get(g).location.node == "survivor" for g in lost),
        4.0,
        "five recorded locations",
    )

    for guid in lost:
        state = site.store.get(guid)
        assert state.location.node == "survivor"
        assert state.location.age > 1
        assert state.pending is None
    assert site.store.get(lost[1]).location.age > age
    by_guid = {r.guid: r for r in survivor.activations}
    assert by_guid[lost[0]].snapshot == b"latest"
    assert kept not in by_guid
    assert client.locate(kept).tad == TAD("survivor", 1)


def test_node_death_without_live_node_leaves_atoms_dormant(cluster: Cluster) -> None:
    cluster.add_node("only")
    site, client = cluster.add_storesite("s1")
    site.on_nodes(cluster.directory.nodes())
    guid = register(client, "only")
    cluster.kill_node("only")
    site.on_nodes(cluster.directory.nodes())
    wait_until(lambda: site.store.get(guid).dormant, 4.0, "atom to go dormant")
    fresh = cluster.add_node("fresh")
    assert client.locate(guid).tad.node == "fresh"
    assert len(fresh.activations) == 1


def test_locate_recovers_atom_whose_node_is_gone(cluster: Cluster) -> None:
    cluster.add_node("gone")
    other = cluster.add_node("other")
    _, client = cluster.add_storesite("s1")
    guid = register(client, "gone")
    cluster.kill_node("gone")  # no watch callback: Locate finds out itself
    assert client.locate(guid).tad == TAD("other", 2)
    assert len(other.activations) == 1


def test_startup_recovers_atoms_of_nodes_that_died_meanwhile(cluster: Cluster) -> None:
    cluster.add_node("gone")
    other = cluster.add_node("other")
    site, client = cluster.add_storesite("s1")
    guid = register(client, "gone")
    cluster.kill_node("gone")
    site.on_nodes(cluster.directory.nodes())  # first membership the storesite sees
    wait_until(lambda: len(other.activations) == 1, 4.0, "recovery at start")
    # The location is recorded once the node has answered the activation.
    wait_until(
        lambda: site.store.get(guid).location == TAD("other", 2), 4.0, "the recorded location"
    )


def test_move_home_hands_atom_to_another_storesite(cluster: Cluster) -> None:
    cluster.add_node("n1")
    _, source = cluster.add_storesite("s1")
    _, destination = cluster.add_storesite("s2")
    digest = source.put_module(b"\0asm-code")
    guid = str(GUID.new("s1"))
    source.register_atom(guid, pb.AtomMeta(name="a", module_hash=digest), TAD("n1", 1), b"s0")
    source.put_checkpoint(guid, TAD("n1", 1), b"s3", seq=3)

    moved = source.move_home(guid, "s2")
    assert moved.forwarded_to == "s2"
    assert cluster.directory.homes[guid] == "s2"
    assert source.locate(guid).forwarded_to == "s2"
    assert destination.locate(guid).tad == TAD("n1", 1)
    ck = destination.get_checkpoint(guid)
    assert (ck.snapshot, ck.seq) == (b"s3", 3)
    assert destination.get_module(digest) == b"\0asm-code"
    with pytest.raises(StorageError, match="now homed at storesite s2"):
        source.put_checkpoint(guid, TAD("n1", 1), b"late", seq=4)
    destination.put_checkpoint(guid, TAD("n1", 1), b"s4", seq=4)
    assert destination.get_checkpoint(guid).snapshot == b"s4"


def test_move_home_of_dormant_atom_keeps_it_dormant(cluster: Cluster) -> None:
    node = cluster.add_node("n1")
    _, source = cluster.add_storesite("s1")
    _, destination = cluster.add_storesite("s2")
    guid = register(source, "n1")
    source.passivated(guid, TAD("n1", 1), b"final")
    source.move_home(guid, "s2")
    [info] = destination.list_atoms()
    assert info.dormant
    assert destination.locate(guid).tad == TAD("n1", 2)
    assert node.activations[0].snapshot == b"final"


def test_register_of_foreign_guid_is_refused(cluster: Cluster) -> None:
    _, client = cluster.add_storesite("s1")
    with pytest.raises(StorageError, match="homed at storesite elsewhere"):
        client.register_atom(str(GUID.new("elsewhere")), pb.AtomMeta(), TAD("n1", 1), b"")


def test_forget_removes_atom(cluster: Cluster) -> None:
    cluster.add_node("n1")
    _, client = cluster.add_storesite("s1")
    guid = register(client, "n1")
    client.forget(guid)
    with pytest.raises(NameNotFoundError, match=guid):
        client.locate(guid)


def test_unreachable_storesite_names_id_and_address() -> None:
    expected = re.escape("storesite s9 at 127.0.0.1:1")
    with (
        StoresiteClient("127.0.0.1:1", sid="s9", timeout=2.0) as client,
        pytest.raises((UnreachableError, CallTimeoutError), match=expected),
    ):
        client.status()


# ------------------------------------------------------------- incarnations


def test_restart_under_the_same_address_recovers_the_old_incarnations_atoms(
    cluster: Cluster,
) -> None:
    cluster.add_node("flaky")
    cluster.add_node("steady", load=50)
    site, client = cluster.add_storesite("s1")
    site.on_nodes(cluster.directory.nodes())
    guid = register(client, "flaky")
    kept = register(client, "steady")
    assert site.store.get(guid).incarnation == "flaky-1"
    # Same name, same address: only the incarnation tells the restart apart.
    cluster.restart_node("flaky", "flaky-2")
    site.on_nodes(cluster.directory.nodes())
    wait_until(
        lambda: site.store.get(guid).location.age > 1, 4.0, "recovery of the old incarnation's atom"
    )
    state = site.store.get(guid)
    assert state.incarnation == {"flaky": "flaky-2", "steady": "steady-1"}[state.location.node]
    assert client.locate(kept).tad == TAD("steady", 1)


def test_storesite_down_during_a_restart_recovers_at_start(cluster: Cluster) -> None:
    flaky = cluster.add_node("flaky")
    site, client = cluster.add_storesite("s1")
    guid = register(client, "flaky")
    cluster.restart_node("flaky", "flaky-2")
    site.on_nodes(cluster.directory.nodes())  # the first membership this storesite sees
    wait_until(lambda: len(flaky.activations) == 1, 4.0, "recovery at start")
    wait_until(
        lambda: site.store.get(guid).location == TAD("flaky", 2), 4.0, "the recorded location"
    )
    assert client.locate(guid).incarnation == "flaky-2"


def test_locate_answers_at_a_gone_incarnation_only_after_recovering(cluster: Cluster) -> None:
    flaky = cluster.add_node("flaky")
    _, client = cluster.add_storesite("s1")
    guid = register(client, "flaky")
    cluster.restart_node("flaky", "flaky-2")  # no watch callback: Locate finds out itself
    location = client.locate(guid)
    assert (location.tad, location.incarnation) == (TAD("flaky", 2), "flaky-2")
    assert len(flaky.activations) == 1


def test_live_incarnation_keeps_its_atoms_while_the_cached_view_lags(cluster: Cluster) -> None:
    node = cluster.add_node("n1")
    site, client = cluster.add_storesite("s1")
    # The cache still lists the previous incarnation; ZooKeeper has the new one,
    # which created the atom.
    cluster.directory.fresh["n1"] = "n1-2"
    guid = str(GUID.new("s1"))
    client.register_atom(guid, pb.AtomMeta(), TAD("n1", 1), b"s", incarnation="n1-2")
    assert client.locate(guid).tad == TAD("n1", 1)
    site.on_nodes(cluster.directory.nodes())
    time.sleep(0.3)  # a deliberate window in which a wrong recovery would show
    assert client.locate(guid).tad == TAD("n1", 1)
    assert node.activations == []


def test_commit_to_a_restarted_destination_is_refused_and_the_move_aborted(
    cluster: Cluster,
) -> None:
    cluster.add_node("n1")
    cluster.add_node("n2")
    _, client = cluster.add_storesite("s1")
    guid = register(client, "n1")
    age = client.prepare(guid, TAD("n1", 1), "n2")
    cluster.restart_node("n2", "n2-2")  # after staging, before COMMIT
    with pytest.raises(MigrationError, match="node n2 restarted since its incarnation n2-1"):
        client.commit(guid, TAD("n2", age), b"moved", incarnation="n2-1")
    assert client.locate(guid).tad == TAD("n1", 1)
    # The refused move is off: the atom can move again.
    again = client.prepare(guid, TAD("n1", 1), "n2")
    assert client.commit(guid, TAD("n2", again), b"moved", incarnation="n2-2").tad.node == "n2"
    with pytest.raises(MigrationError, match="names no incarnation of node n1"):
        client.commit(
            guid, TAD("n1", client.prepare(guid, TAD("n2", again), "n1")), b"", incarnation=""
        )


def test_record_without_incarnation_is_reconciled_with_the_live_node(cluster: Cluster) -> None:
    holder = cluster.add_node("holder")
    lost = cluster.add_node("lost")
    site, _ = cluster.add_storesite("s1")
    held, gone = str(GUID.new("s1")), str(GUID.new("s1"))
    for guid, node in ((held, "holder"), (gone, "lost")):
        # Records as an older store wrote them: no incarnation.
        site.store.register_atom(guid, pb.AtomMeta(), TAD(node, 1), b"s")
        assert site.store.get(guid).incarnation == ""
    holder.incarnation, lost.incarnation = "holder-1", "lost-1"
    holder.holding[held] = TAD("holder", 1)
    site.on_nodes(cluster.directory.nodes())
    # The node that holds its atom keeps it; the other's atom is recovered.
    wait_until(lambda: site.store.get(held).incarnation == "holder-1", 4.0, "reconciled record")
    wait_until(lambda: site.store.get(gone).location.age > 1, 4.0, "recovered atom")
    assert [r.guid for r in holder.activations + lost.activations] == [gone]
