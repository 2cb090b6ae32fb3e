"""A real storesite process on a real ZooKeeper (docs/DESIGN.md §6, §8).

The storesite runs as ``python -m storesite``; the nodes are small fake
Supervisor servicers in this process, registered in the name service with
their own sessions, so a node's death is a real session ending.
"""

from __future__ import annotations

import os
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from hermesx.core.errors import CheckpointDamagedError, HermesError, StorageError
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import snapshot_checksum
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.storesite_client import StoresiteClient
from hermesx.testing.reaper import tethered
from hermesx.testing.wait import wait_until
from nameservice import NameService, ZooKeeperServer

pytestmark = pytest.mark.integration

_counter = 0


@pytest.fixture(scope="module")
def zk(request: pytest.FixtureRequest) -> Iterator[str]:
    """The session's ZooKeeper when the suite provides one, else our own."""
    try:
        server = request.getfixturevalue("zk_server")
        yield str(server.connect_string)
        return
    except pytest.FixtureLookupError:
        pass
    own = ZooKeeperServer()
    own.start()
    try:
        yield own.connect_string
    finally:
        own.stop()


@pytest.fixture
def cluster_name() -> str:
    global _counter
    _counter += 1
    return f"ss{os.getpid()}x{_counter}"


class FakeSupervisor(pbg.SupervisorServicer):
    def __init__(self) -> None:
        self.activations: list[pb.ActivateRequest] = []

    def Activate(
        self, request: pb.ActivateRequest, context: grpc.ServicerContext
    ) -> pb.ActivateReply:
        if not request.confirm:  # a confirmation only lets the staged copy serve
            self.activations.append(request)
        return pb.ActivateReply(tad=request.tad)

    def Status(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.NodeStatus:
        return pb.NodeStatus(active_atoms=len(self.activations))


class FakeNode:
    """A Supervisor servicer plus its own name-service session (its life in the cluster)."""

    def __init__(self, name: str, zk: str, cluster: str) -> None:
        self.name = name
        self.servicer = FakeSupervisor()
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        pbg.add_SupervisorServicer_to_server(self.servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.names = NameService(zk, cluster, session_timeout=2.0)
        self.names.start()
        self.names.register_node(name, f"127.0.0.1:{port}")

    def die(self) -> None:
        """End the session: the name service drops the node at once, as after expiry."""
        self.names.close()

    def stop(self) -> None:
        self.names.close()
        self.server.stop(0)


class StoresiteProcess:
    def __init__(
        self,
        sid: str,
        data: pathlib.Path,
        zk: str,
        cluster: str,
        *,
        init: bool = False,
        options: tuple[str, ...] = (),
        command: tuple[str, ...] = ("storesite",),
    ) -> None:
        """``command``: the module and words that run a storesite (``python -m``)."""
        self.sid = sid
        # `python -m storesite` says it is listening, `hermesx storesite serve` serving.
        self.ready_word = "listening" if command == ("storesite",) else "serving"
        self.proc = tethered(
            [
                sys.executable,
                "-m",
                *command,
                "--id",
                sid,
                "--listen",
                "127.0.0.1:0",
                "--data",
                str(data),
                "--zk",
                zk,
                "--cluster",
                cluster,
                *(["--init"] if init else []),
                *options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.address = ""

    def wait_ready(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        line = lines.get(timeout=timeout)
        prefix = f"storesite {self.sid} {self.ready_word} on "
        assert line.startswith(prefix), f"unexpected output {line!r}: {self.stderr_tail()}"
        self.address = line[len(prefix) :].strip()
        return self.address

    def stderr_tail(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-2000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


@pytest.fixture
def processes() -> Iterator[list[StoresiteProcess | FakeNode]]:
    started: list[StoresiteProcess | FakeNode] = []
    yield started
    for item in reversed(started):
        item.stop()


def test_storesite_process_registers_and_serves(
    zk: str, cluster_name: str, tmp_path: pathlib.Path, processes: list[StoresiteProcess | FakeNode]
) -> None:
    site = StoresiteProcess("s1", tmp_path / "s1", zk, cluster_name, init=True)
    processes.append(site)
    address = site.wait_ready()
    with NameService(zk, cluster_name) as names:
        assert names.storesites()["s1"].address == address
    with StoresiteClient(address, sid="s1") as client:
        assert client.status().id == "s1"
    assert site.stop() == 0
    with NameService(zk, cluster_name) as names:
        assert "s1" not in names.storesites()


@pytest.mark.parametrize(
    "command", [("storesite",), ("hermesx", "storesite", "serve")], ids=["module", "cli"]
)
def test_a_killed_storesites_registration_lasts_the_session_timeout_it_was_given(
    zk: str,
    cluster_name: str,
    tmp_path: pathlib.Path,
    processes: list[StoresiteProcess | FakeNode],
    command: tuple[str, ...],
) -> None:
    """``--session-timeout`` is the storesite's session: a dead one is listed that long.

    With 2 s asked, the registration of a SIGKILLed storesite goes in about
    2 s (ZooKeeper expires the session), well before the 4 s default would
    let it; it is not dropped at once either, as a clean close would.
    """
    site = StoresiteProcess(
        "s1",
        tmp_path / "s1",
        zk,
        cluster_name,
        init=True,
        options=("--session-timeout", "2"),
        command=command,
    )
    processes.append(site)
    site.wait_ready()
    with NameService(zk, cluster_name) as names:
        assert "s1" in names.storesites()
        site.proc.kill()
        site.proc.wait(timeout=10)
        killed = time.monotonic()
        wait_until(lambda: "s1" not in names.storesites(), 10.0, "the registration to expire")
        listed_for = time.monotonic() - killed
    assert 1.0 < listed_for < 3.8, f"registration outlived the process by {listed_for:.1f} s"


def test_node_death_recovers_atoms_on_a_live_node(
    zk: str, cluster_name: str, tmp_path: pathlib.Path, processes: list[StoresiteProcess | FakeNode]
) -> None:
    doomed = FakeNode("doomed", zk, cluster_name)
    survivor = FakeNode("survivor", zk, cluster_name)
    processes.extend([doomed, survivor])
    site = StoresiteProcess("s1", tmp_path / "s1", zk, cluster_name, init=True)
    processes.append(site)
    with StoresiteClient(site.wait_ready(), sid="s1") as client:
        guids = [str(GUID.new("s1")) for _ in range(3)]
        for guid in guids:
            client.register_atom(guid, pb.AtomMeta(name=guid[-6:]), TAD("doomed", 1), b"s0")
        client.put_checkpoint(guids[0], TAD("doomed", 1), b"latest", seq=1)

        doomed.die()
        wait_until(lambda: len(survivor.servicer.activations) == 3, 15.0, "three recoveries")
        # The location is recorded once the node has answered the activation.
        wait_until(
            lambda: all(
                a.tad == TAD("survivor", 2) for a in client.list_atoms() if a.guid in guids
            ),
            15.0,
            "three recorded locations",
        )
        assert len(survivor.servicer.activations) == 3
        snapshots = {r.guid: r.snapshot for r in survivor.servicer.activations}
        assert snapshots[guids[0]] == b"latest"
        assert client.locate(guids[1]).tad == TAD("survivor", 2)


def _node_and_new_storesite(
    zk: str, cluster_name: str, tmp_path: pathlib.Path, processes: list[StoresiteProcess | FakeNode]
) -> tuple[FakeNode, StoresiteProcess]:
    """A node n1 and storesite s1 on a new store in ``tmp_path / "s1"``, both stopped after."""
    node = FakeNode("n1", zk, cluster_name)
    processes.append(node)
    first = StoresiteProcess("s1", tmp_path / "s1", zk, cluster_name, init=True)
    processes.append(first)
    return node, first


def test_restart_keeps_records_and_refuses_a_second_process(
    zk: str, cluster_name: str, tmp_path: pathlib.Path, processes: list[StoresiteProcess | FakeNode]
) -> None:
    node, first = _node_and_new_storesite(zk, cluster_name, tmp_path, processes)
    data = tmp_path / "s1"
    guid = str(GUID.new("s1"))
    with StoresiteClient(first.wait_ready(), sid="s1") as client:
        client.register_atom(guid, pb.AtomMeta(name="kept"), TAD("n1", 1), b"s0")
        client.put_checkpoint(guid, TAD("n1", 1), b"s1", seq=1)

    second = StoresiteProcess("s2", data, zk, cluster_name)
    processes.append(second)
    assert second.proc.wait(timeout=30) != 0
    assert "held by storesite s1" in second.stderr_tail()

    first.proc.kill()  # crash: its registration lingers until the session expires
    first.proc.wait(timeout=10)
    again = StoresiteProcess("s1", data, zk, cluster_name)
    processes.append(again)
    with StoresiteClient(again.wait_ready(), sid="s1") as client:
        ck = client.get_checkpoint(guid)
        assert (ck.snapshot, ck.tad, ck.meta.name) == (b"s1", TAD("n1", 1), "kept")
        # The node is alive: the restart must not have recovered the atom.
        assert client.locate(guid).tad == TAD("n1", 1)
    assert node.servicer.activations == []


def refusal(site: StoresiteProcess) -> str:
    """The one line a storesite that refused to start printed; it never served."""
    assert site.proc.wait(timeout=30) != 0
    assert site.proc.stdout is not None and site.proc.stderr is not None
    assert "listening" not in site.proc.stdout.read()
    lines = [line for line in site.proc.stderr.read().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_store_cut_short_is_refused_in_one_line_before_serving(
    zk: str, cluster_name: str, tmp_path: pathlib.Path, processes: list[StoresiteProcess | FakeNode]
) -> None:
    _node, first = _node_and_new_storesite(zk, cluster_name, tmp_path, processes)
    data = tmp_path / "s1"
    with StoresiteClient(first.wait_ready(), sid="s1") as client:
        for _ in range(30):
            client.register_atom(str(GUID.new("s1")), pb.AtomMeta(), TAD("n1", 1), os.urandom(6000))
    assert first.stop() == 0
    path = data / "lmdb" / "data.mdb"
    size = path.stat().st_size
    os.truncate(path, size // 2)

    again = StoresiteProcess("s1", data, zk, cluster_name)
    processes.append(again)
    line = refusal(again)
    assert line.startswith(f"error: storesite s1: store {path} is damaged: it is {size // 2} bytes")
    assert "(truncated); move it away and start with --init" in line
    with NameService(zk, cluster_name) as names:
        assert "s1" not in names.storesites()


def test_a_deleted_data_dir_or_another_storesites_store_is_refused(
    zk: str, cluster_name: str, tmp_path: pathlib.Path, processes: list[StoresiteProcess | FakeNode]
) -> None:
    data = tmp_path / "s1"
    first = StoresiteProcess("s1", data, zk, cluster_name, init=True)
    processes.append(first)
    first.wait_ready()
    assert first.stop() == 0

    other = StoresiteProcess("s2", data, zk, cluster_name, init=True)
    processes.append(other)
    assert refusal(other) == f"error: storesite s2: the store in {data} belongs to storesite s1"

    shutil.rmtree(data)
    again = StoresiteProcess("s1", data, zk, cluster_name)
    processes.append(again)
    assert refusal(again) == (
        f"error: storesite s1: data dir {data} does not exist; "
        "start with --init to create a new one"
    )
    assert not data.exists()
    fresh = StoresiteProcess("s1", data, zk, cluster_name, init=True)
    processes.append(fresh)
    with StoresiteClient(fresh.wait_ready(), sid="s1") as client:
        assert client.status().atoms == 0


def test_a_flipped_bit_in_a_stored_checkpoint_is_detected_on_read_and_never_restored(
    zk: str, cluster_name: str, tmp_path: pathlib.Path, processes: list[StoresiteProcess | FakeNode]
) -> None:
    doomed = FakeNode("doomed", zk, cluster_name)
    survivor = FakeNode("survivor", zk, cluster_name)
    processes.extend([doomed, survivor])
    data = tmp_path / "s1"
    first = StoresiteProcess("s1", data, zk, cluster_name, init=True)
    processes.append(first)
    guid = str(GUID.new("s1"))
    states = [b"<count=%d>" % n + bytes(range(256)) * 12 for n in (0, 11, 12)]
    with StoresiteClient(first.wait_ready(), sid="s1") as client:
        client.register_atom(
            guid,
            pb.AtomMeta(name="c"),
            TAD("doomed", 1),
            states[0],
            checksum=snapshot_checksum(states[0]),
            generation=0,
        )
        for seq, state in ((1, states[1]), (2, states[2])):
            client.put_checkpoint(
                guid,
                TAD("doomed", 1),
                state,
                seq,
                checksum=snapshot_checksum(state),
                generation=10 + seq,
            )
        # Damage in transit is refused at the door.
        with pytest.raises(StorageError, match="seq 3 is damaged"):
            client.put_checkpoint(
                guid, TAD("doomed", 1), states[2] + b"!", 3, checksum=snapshot_checksum(states[2])
            )
    assert first.stop() == 0
    # One bit flipped on disk, inside the latest checkpoint's bytes.
    path = data / "lmdb" / "data.mdb"
    raw = bytearray(path.read_bytes())
    at = raw.index(b"<count=12>") + 100
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))

    again = StoresiteProcess("s1", data, zk, cluster_name)
    processes.append(again)
    with StoresiteClient(again.wait_ready(), sid="s1") as client:
        with pytest.raises(CheckpointDamagedError) as info:
            client.get_checkpoint(guid)
        message = str(info.value)
        assert f"checkpoint #3 of atom {guid} (doomed@1 seq 2) is damaged" in message, message
        assert f"so atom {guid} is not restored" in message
        doomed.die()
        # Recovery is refused, clearly, every time; nothing is ever activated.
        wait_until(lambda: _locate_error(client, guid) is not None, 15.0, "a refused recovery")
        refused = _locate_error(client, guid)
        assert isinstance(refused, CheckpointDamagedError) and "is damaged" in str(refused)
    assert survivor.servicer.activations == []


def _locate_error(client: StoresiteClient, guid: str) -> HermesError | None:
    try:
        client.locate(guid, timeout=10)
    except HermesError as err:
        return err
    return None


def test_the_call_channel_is_registered_and_answers_as_grpc_does(
    zk: str, cluster_name: str, tmp_path: pathlib.Path, processes: list[StoresiteProcess | FakeNode]
) -> None:
    from hermesx.rpc.node_client import call_address
    from hermesx.rpc.storesite_client import CheckedSnapshot

    lean = StoresiteProcess("s1", tmp_path / "s1", zk, cluster_name, init=True)
    plain = StoresiteProcess(
        "s2", tmp_path / "s2", zk, cluster_name, init=True, options=("--call-listen", "off")
    )
    processes += [lean, plain]
    address = lean.wait_ready()
    plain.wait_ready()
    with NameService(zk, cluster_name) as names:
        wait_until(lambda: {"s1", "s2"} <= set(names.storesites()), timeout=10)
        channel = call_address(names.storesites()["s1"])
        assert call_address(names.storesites()["s2"]) is None
    assert channel is not None and channel != address
    # A checkpoint of an atom the storesite does not know is refused with the same
    # kind and message whichever transport carries it.
    guid = str(GUID.new("s1"))
    state = CheckedSnapshot(b"state", snapshot_checksum(b"state"), 1)
    refusals = []
    for call in (channel, None):
        with StoresiteClient(address, sid="s1", call=call) as client:
            with pytest.raises(HermesError) as caught:
                client.send_checkpoint(guid, TAD("n1", 1), state, 1)
            refusals.append((caught.value.kind, str(caught.value)))
    assert refusals[0] == refusals[1]
