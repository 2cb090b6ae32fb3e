"""Tools of the fault suite: a fault-injecting TCP proxy, a counting load generator, the tally.

The suite proves docs/DESIGN.md §6's promise under real faults: with checkpoints
after every call, an acknowledged increment is never lost and no call runs
twice. Every scenario drives a counter atom with a few client threads
(each call with its own request id, retried by the client library), records
what happened to every call, and judges the final counter value against
those records (:func:`tally`).

:class:`TcpProxy` sits between two processes on 127.0.0.1 and can add
latency, drop every byte (a partition: connections stay open, nothing
arrives) or reset every connection and refuse new ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
from kazoo.client import KazooClient

from hermesx.client import Client
from hermesx.core import codec
from hermesx.core.config import resolve_tls
from hermesx.core.errors import HermesError
from hermesx.local.cluster import LocalCluster
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.security import zk_auth
from hermesx.rpc.wire import TLSIdentity, open_channel
from hermesx.testing.wait import wait_until

log = logging.getLogger(__name__)

# Error kinds that say the call was refused before it could run; any other
# failure may have run the increment (a lost reply, a checkpoint that failed
# after the call ran: the client then resends the id until its deadline and
# reports outcome_unknown; request_expired: the first run may have counted),
# so it may legitimately show up in the final value.
NOT_EXECUTED_KINDS = frozenset(
    {"not_found", "invalid_name", "invalid_pattern", "method", "bad_module", "configuration"}
)
RAN_NOT_DURABLE = "call ran but checkpoint failed"

# The harness's ``start_cluster`` fixture: (node names, zk=..., node_zk=...) -> cluster.
ClusterStarter = Callable[..., LocalCluster]


@contextlib.contextmanager
def counter_cluster(
    start_cluster: ClusterStarter,
    counter: pathlib.Path,
    nodes: Sequence[str] = ("n1", "n2"),
    on: str = "n1",
    **client_options: Any,
) -> Iterator[tuple[LocalCluster, Client]]:
    """The subject of most scenarios: a cluster of ``nodes``, a client of it
    (``client_options`` go to :class:`Client`), and counter atom ``c`` on node ``on``,
    checkpointed after every call."""
    cluster = start_cluster(list(nodes))
    with Client(cluster.zk, cluster.name, **client_options) as client:
        client.create(counter, name="c", on=on, checkpoint="every-call")
        yield cluster, client


def storesite_address(client: Client, sid: str = "s1") -> str:
    """The address storesite ``sid`` registered, "" while it is not registered."""
    member = client.naming.storesites().get(sid)
    return member.address if member is not None else ""


def restart_storesite(
    cluster: LocalCluster, client: Client, sid: str = "s1", down_for: float = 0.0
) -> tuple[float, float]:
    """kill -9 storesite ``sid``, leave it down ``down_for`` seconds, start it again and
    wait until it registered; returns when it was killed and when it was back."""
    old = storesite_address(client, sid)
    cluster.kill(f"storesite-{sid}")
    killed_at = time.monotonic()
    if down_for:
        time.sleep(down_for)  # the outage window: calls keep coming while it is down
    cluster.start_storesite(sid)
    # Its registration carries no pid: wait for the new address instead.
    wait_until(
        lambda: storesite_address(client, sid) not in ("", old),
        60.0,
        f"the restarted storesite {sid} to register",
    )
    return killed_at, time.monotonic()


# ---------------------------------------------------------------- the proxy


class _Pipe:
    """One proxied connection: two directions, each a reader and a delaying writer."""

    def __init__(self, proxy: TcpProxy, downstream: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.sockets = (downstream, upstream)
        self.closed = threading.Event()
        for src, dst, label in ((downstream, upstream, "up"), (upstream, downstream, "down")):
            q: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
            threading.Thread(
                target=self._read, args=(src, q), name=f"proxy-{label}-read", daemon=True
            ).start()
            threading.Thread(
                target=self._write, args=(dst, q), name=f"proxy-{label}-write", daemon=True
            ).start()

    def _read(self, src: socket.socket, q: queue.Queue[tuple[float, bytes] | None]) -> None:
        try:
            while not self.closed.is_set():
                data = src.recv(65536)
                if not data:
                    if self.proxy.mode == "blackhole":
                        # A partition delivers no FIN either: the other end
                        # hears nothing until the link heals (heal closes it).
                        self.closed.wait()
                    break
                if self.proxy.mode == "blackhole":
                    continue  # a partition: the bytes never arrive
                # Delivered at arrival + delay, so latency is added without
                # serialising the stream behind one sleep per chunk.
                q.put((time.monotonic() + self.proxy.delay, data))
        except OSError:
            pass
        finally:
            q.put(None)

    def _write(self, dst: socket.socket, q: queue.Queue[tuple[float, bytes] | None]) -> None:
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # the injected latency itself
                if self.proxy.mode == "blackhole":
                    continue
                dst.sendall(data)
                self.proxy.count_bytes(len(data))
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.proxy.forget(self)


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target`` (``host:port``) that injects faults.

    Modes: ``open`` (forward, after ``delay`` seconds per direction),
    ``blackhole`` (connections stay up, every byte is dropped: what a
    network partition looks like to both ends) and ``reset`` (every
    connection is closed, new ones are closed as soon as they arrive).
    """

    def __init__(self, target: str, *, delay: float = 0.0) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.delay = delay
        self.mode = "open"
        self.accepted = 0
        self.bytes_forwarded = 0
        self._lock = threading.Lock()
        self._pipes: set[_Pipe] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="proxy-accept", daemon=True
        )
        self._acceptor.start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "reset":
                conn.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5.0)
            except OSError:
                conn.close()
                continue
            conn.settimeout(None)
            upstream.settimeout(None)
            for sock in (conn, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.accepted += 1
                self._pipes.add(_Pipe(self, conn, upstream))

    def count_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_forwarded += n

    def forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)

    def _close_all(self) -> None:
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.close()

    def cut(self, mode: str = "blackhole") -> None:
        """Cut the link: drop every byte (``blackhole``), or close and refuse (``reset``)."""
        if mode not in ("blackhole", "reset"):
            raise ValueError(f"unknown cut mode {mode!r}")
        self.mode = mode
        if mode == "reset":
            self._close_all()

    def heal(self) -> None:
        """Forward again; connections that lost bytes are closed (their streams are torn)."""
        was = self.mode
        self.mode = "open"
        if was == "blackhole":
            self._close_all()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._acceptor.join(timeout=2.0)
        self._close_all()


@contextlib.contextmanager
def counter_behind_zk_link(
    start_cluster: ClusterStarter,
    counter: pathlib.Path,
    zk: str,
    node: str,
    session_timeout: float = 2.0,
) -> Iterator[tuple[LocalCluster, TcpProxy, Client]]:
    """Nodes n1-n3, of which ``node`` reaches ZooKeeper (``zk``) only through a proxy the
    test can cut (the other parts reach it directly), a client, and counter atom ``c``
    on ``node``, checkpointed after every call."""
    with TcpProxy(zk) as zk_link:
        nodes = ["n1", "n2", "n3"]
        cluster = start_cluster(
            nodes, session_timeout=session_timeout, node_zk={node: zk_link.address}
        )
        with Client(cluster.zk, cluster.name) as client:
            client.create(counter, name="c", on=node, checkpoint="every-call")
            yield cluster, zk_link, client


# ---------------------------------------------------------------- the load


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What happened to one logical call (one request id)."""

    request_id: str
    started: float
    ended: float
    value: int | None  # the counter value the call returned, when acknowledged
    node: str  # node that answered (from the reply's TAD), "" when unknown
    age: int
    error_kind: str  # "" when acknowledged
    error: str
    clear: bool  # failed with a HermesError (a clear, typed error)
    storesite_fallback: bool  # the trace shows a storesite lookup
    attempts: int = 1  # times the request id was sent (see LoadGenerator.resubmit_for)

    @property
    def ok(self) -> bool:
        return not self.error_kind


class LoadGenerator:
    """Client threads calling ``incr(1)`` on one atom until stopped; every call recorded.

    Each thread has its own :class:`Client` (its own name-service session,
    stash and channels), as separate client processes would. With
    ``resubmit_for`` > 0 a call that failed ambiguously is sent again with
    the same request id for up to that many seconds.
    """

    def __init__(
        self,
        zk: str,
        cluster: str,
        target: str,
        *,
        threads: int = 3,
        via: str | None = None,
        trace: bool = False,
        pause: float = 0.005,
        call_timeout: float = 30.0,
        resubmit_for: float = 0.0,
        failure_pause: float = 0.1,
        settle: bool = True,
    ) -> None:
        self.zk = zk
        self.cluster = cluster
        self.target = target
        self.threads = threads
        self.via = via
        self.trace = trace
        self.pause = pause
        self.call_timeout = call_timeout
        self.resubmit_for = resubmit_for
        self.failure_pause = failure_pause
        # False: the client does not resend a call whose outcome is unknown,
        # so every failure of the cluster shows (as a caller of gRPC Invoke sees it).
        self.settle = settle
        self._records: list[CallRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=self.call_timeout + self.resubmit_for + 15.0)
        stuck = [w.name for w in self._workers if w.is_alive()]
        if stuck:
            raise AssertionError(f"load threads did not stop: {stuck}")

    @property
    def records(self) -> list[CallRecord]:
        with self._lock:
            return list(self._records)

    def _run(self) -> None:
        try:
            with Client(self.zk, self.cluster, timeout=self.call_timeout) as client:
                client.invoker.settle_outcome = self.settle
                while not self._stop.is_set():
                    record = self._one_call(client)
                    self._records_append(record)
                    # Back off after a failure, as a client should: a tight
                    # retry loop would only flood the atom's reply table.
                    self._stop.wait(self.pause if record.ok else self.failure_pause)
        except BaseException as exc:  # reported by the test, never swallowed
            self.errors.append(exc)

    def _records_append(self, record: CallRecord) -> None:
        with self._lock:
            self._records.append(record)

    def _one_call(self, client: Client) -> CallRecord:
        # An id of the client's own form, as client.atom(...).incr() would send.
        request_id = client.invoker.request_ids.next()
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                outcome = client.invoke(
                    self.target,
                    "incr",
                    codec.pack(1),
                    request_id=request_id,
                    via=self.via,
                    trace=self.trace,
                    timeout=self.call_timeout,
                )
            except HermesError as exc:
                # An application that wants exactly-once sends the same request
                # id again after an ambiguous failure: the atom answers the
                # first run's reply if it ran, else runs it now.
                again = (
                    exc.kind not in NOT_EXECUTED_KINDS
                    and time.monotonic() - started < self.resubmit_for
                )
                if again:
                    time.sleep(0.2)  # load pacing: the resend backs off as an application would
                    continue
                return self._failed(request_id, started, attempts, exc.kind, exc, clear=True)
            except Exception as exc:  # a raw library error leaking out is a finding
                kind = type(exc).__name__
                return self._failed(request_id, started, attempts, kind, exc, clear=False)
            break
        tad = outcome.tad
        return CallRecord(
            request_id=request_id,
            started=started,
            ended=time.monotonic(),
            value=as_int(codec.unpack(outcome.result)),
            node=tad.node if tad else "",
            age=tad.age if tad else 0,
            error_kind="",
            error="",
            clear=True,
            storesite_fallback=any(h.event == "storesite" for h in outcome.trace),
            attempts=attempts,
        )

    @staticmethod
    def _failed(
        request_id: str, started: float, attempts: int, kind: str, exc: Exception, *, clear: bool
    ) -> CallRecord:
        return CallRecord(
            request_id=request_id,
            started=started,
            ended=time.monotonic(),
            value=None,
            node="",
            age=0,
            error_kind=kind,
            error=str(exc),
            clear=clear,
            storesite_fallback=False,
            attempts=attempts,
        )

    def acks_since(self, t: float) -> int:
        return sum(1 for r in self.records if r.ok and r.started >= t)

    def wait_recovered_elsewhere(self, node: str, n: int = 30) -> None:
        """Wait until a node other than ``node`` answered a call (the storesite recovered
        the atom there), then for ``n`` more acknowledged calls."""
        wait_until(
            lambda: any(r.ok and r.node != node for r in self.records),
            60.0,
            "the storesite to recover the atom on another node",
        )
        self.wait_acks(n, since=time.monotonic())

    def wait_acks(self, n: int, *, since: float = 0.0, timeout: float = 90.0) -> int:
        """Wait (bounded) until ``n`` calls that started at or after ``since`` were acknowledged."""

        def enough() -> bool:
            if self.errors:
                raise AssertionError(f"load thread crashed: {self.errors[0]!r}")
            return self.acks_since(since) >= n

        try:
            wait_until(enough, timeout, f"{n} acknowledged calls")
        except AssertionError:
            if self.errors:
                raise
            got, kinds = self.acks_since(since), _error_summary(self.records)
            raise AssertionError(
                f"only {got} of {n} calls acknowledged within {timeout:.0f}s; errors: {kinds}"
            ) from None
        return self.acks_since(since)


def _error_summary(records: Sequence[CallRecord]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for r in records:
        if not r.ok:
            kinds[r.error_kind] = kinds.get(r.error_kind, 0) + 1
    return kinds


# ---------------------------------------------------------------- the tally


@dataclass(frozen=True, slots=True)
class Tally:
    """The five counts of a scenario, and what they were computed from."""

    scenario: str
    attempted: int
    acknowledged: int
    failed_clear: int
    lost: int
    twice: int
    unclear_failures: int
    ambiguous_failures: int
    final_value: int
    duplicate_values: int
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    sample_errors: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The ``report`` fixture (conftest.py): records a scenario's tally for the summary table.
Report = Callable[[Tally], None]


def tally(scenario: str, records: Sequence[CallRecord], final: int | None, start: int = 0) -> Tally:
    """Judge the final counter value against every call's outcome.

    * lost: acknowledged increments the final value does not hold. Witnesses:
      fewer increments than acknowledgements, two acknowledged calls that
      returned the same value (one of them was rolled back and re-run over),
      or an acknowledged value above the final one.
    * twice: increments beyond what acknowledged calls plus calls that
      failed ambiguously (may have run) can explain.

    ``final`` is None when the atom could not be read at the end: lost and
    twice are then unknown (-1), which :func:`assert_nothing_lost` rejects.
    """
    acked = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    values = [r.value for r in acked if r.value is not None]
    duplicates = len(values) - len(set(values))
    ambiguous = sum(1 for r in failed if r.error_kind not in NOT_EXECUTED_KINDS)
    if final is None:
        lost = twice = -1
    else:
        grown = final - start
        above = sum(1 for v in values if v > final)
        lost = max(0, len(acked) - grown, duplicates + above)
        twice = max(0, grown - len(acked) - ambiguous)
    return Tally(
        scenario=scenario,
        attempted=len(records),
        acknowledged=len(acked),
        failed_clear=sum(1 for r in failed if r.clear),
        lost=lost,
        twice=twice,
        unclear_failures=sum(1 for r in failed if not r.clear),
        ambiguous_failures=ambiguous,
        final_value=-1 if final is None else final,
        duplicate_values=duplicates,
        errors_by_kind=_error_summary(records),
        sample_errors=list(dict.fromkeys(r.error[:300] for r in failed))[:3],
    )


def assert_nothing_lost(t: Tally) -> None:
    unclear = t.unclear_failures
    assert t.lost == 0, f"{t.scenario}: {t.lost} acknowledged increments lost: {t}"
    assert t.twice == 0, f"{t.scenario}: {t.twice} increments executed twice: {t}"
    assert unclear == 0, f"{t.scenario}: {unclear} calls failed without a hermesx error: {t}"


def as_int(value: object) -> int:
    if not isinstance(value, int):
        raise AssertionError(f"the counter answered {value!r}, not an int")
    return value


def latency_ms(records: Sequence[CallRecord], q: float) -> float:
    durations = sorted((r.ended - r.started) * 1000 for r in records if r.ok)
    if not durations:
        return 0.0
    return round(durations[min(len(durations) - 1, int(q * len(durations)))], 2)


# ---------------------------------------------------------------- probes


def final_value(client: Client, target: str, timeout: float = 60.0) -> int:
    """The counter's value once the dust settled (the client library retries)."""
    outcome = client.invoke(target, "get", codec.pack(None), timeout=timeout)
    return as_int(codec.unpack(outcome.result))


def serves_here(stub: pbg.SupervisorStub, guid: str) -> bool | None:
    """Does this node itself answer a call to ``guid`` right now? None when it is unreachable.

    The request is sent as if it had used up its hops, so a node that only
    holds a forwarding TAD answers MOVED instead of forwarding; a read-only
    ``get`` without a request id leaves the atom's reply table alone.
    """
    request = pb.InvokeRequest(
        guid=guid, method="get", args=codec.pack(None), hop_limit=1, hops=1, timeout=2.0
    )
    try:
        reply = stub.Invoke(request, timeout=3.0)
    except grpc.RpcError:
        return None
    return bool(reply.WhichOneof("outcome") == "result")


def active_here(stub: pbg.SupervisorStub, guid: str) -> bool | None:
    try:
        reply = stub.Locate(pb.LocateRequest(guid=guid), timeout=3.0)
    except grpc.RpcError:
        return None
    return bool(reply.active_here)


@dataclass(frozen=True, slots=True)
class ProbeRound:
    at: float
    serving: tuple[str, ...]
    active: tuple[str, ...]


class CopyWatcher:
    """Polls nodes, in rounds, for whether each serves / holds the atom.

    Nodes are reached by address, not through the name service, so a node
    that dropped out of it (partitioned, session expired) is still watched.
    """

    def __init__(
        self, nodes: Mapping[str, str], guid: str, period: float = 0.1, *, cluster: str = ""
    ) -> None:
        tls = _client_tls(cluster)
        self.channels = {node: open_channel(address, tls=tls) for node, address in nodes.items()}
        self.stubs = {node: pbg.SupervisorStub(ch) for node, ch in self.channels.items()}
        self.guid = guid
        self.period = period
        self.rounds: list[ProbeRound] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="copy-watcher", daemon=True)

    def __enter__(self) -> CopyWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30.0)
        for channel in self.channels.values():
            channel.close()

    def probe_once(self) -> ProbeRound:
        serving = tuple(n for n, stub in self.stubs.items() if serves_here(stub, self.guid))
        active = tuple(n for n, stub in self.stubs.items() if active_here(stub, self.guid))
        probe = ProbeRound(time.monotonic(), serving, active)
        self.rounds.append(probe)
        return probe

    def _run(self) -> None:
        while not self._stop.is_set():
            self.probe_once()
            self._stop.wait(self.period)

    def most_serving(self) -> int:
        return max((len(r.serving) for r in self.rounds), default=0)

    def most_active(self) -> int:
        return max((len(r.active) for r in self.rounds), default=0)


@dataclass(frozen=True, slots=True)
class Fencing:
    """What the load and a :class:`CopyWatcher` saw of a node cut from ZooKeeper whose
    atom the storesite recovered elsewhere (docs/DESIGN.md §6)."""

    notes: dict[str, Any]  # for the scenario's tally
    # No call was answered, or even run, by the old copy once the recovered one answered.
    old_started_before_first_new_answer: bool
    ran_late_on_old: list[CallRecord]


def fencing(
    records: Sequence[CallRecord], node: str, cut_at: float, where: Any, watcher: CopyWatcher
) -> Fencing:
    """Judge the calls of a load on an atom of ``node``, cut at ``cut_at`` and recovered at
    ``where`` (a locate reply)."""
    old = [r for r in records if r.ok and r.node == node]
    new = [r for r in records if r.ok and r.node != node]
    first_new_end = min(r.ended for r in new)
    ran_late_on_old = [
        r for r in records if not r.ok and RAN_NOT_DURABLE in r.error and r.started > first_new_end
    ]
    notes = {
        "recovered_on": f"{where.node}@{where.age}",
        "last_old_answer_after_cut_s": round(max(r.ended for r in old) - cut_at, 2),
        "first_new_answer_after_cut_s": round(first_new_end - cut_at, 2),
        "probe_rounds": len(watcher.rounds),
        "most_serving": watcher.most_serving(),
        "most_holding": watcher.most_active(),
    }
    return Fencing(notes, max(r.started for r in old) < first_new_end, ran_late_on_old)


# ---------------------------------------------------------------- misc


def _client_tls(cluster: str) -> TLSIdentity | None:
    """The client identity of a local cluster that runs with certificates."""
    directory = resolve_tls(cluster) if cluster else None
    return TLSIdentity(directory, "client", cluster) if directory is not None else None


@contextlib.contextmanager
def zookeeper(connect: str, cluster: str = "") -> Iterator[KazooClient]:
    directory = resolve_tls(cluster) if cluster else None
    auth = None
    if directory is not None:
        user, secret = zk_auth(directory)
        auth = [("digest", f"{user}:{secret}")]
    zk = KazooClient(hosts=connect, timeout=10.0, auth_data=auth)
    zk.start(timeout=15.0)
    try:
        yield zk
    finally:
        zk.stop()
        zk.close()


def advertise_storesite(connect: str, cluster: str, sid: str, address: str) -> str:
    """Point ``storesites/<sid>`` at ``address`` (e.g. a proxy); returns the old address.

    The entry stays the storesite's own (ephemeral, its session); only the
    address every node and client reads from it changes, and its call channel
    is left out, so checkpoints too go to ``address`` (over gRPC).
    """
    path = f"/hermesx/{cluster}/storesites/{sid}"
    with zookeeper(connect, cluster) as zk:
        raw, stat = zk.get(path)
        data = json.loads(raw.decode())
        old = str(data["address"])
        data["address"] = address
        data.pop("call", None)
        zk.set(path, json.dumps(data, sort_keys=True).encode(), version=stat.version)
    return old
