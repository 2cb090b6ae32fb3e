"""Typed client of the Storesite gRPC service (docs/DESIGN.md §4 steps 3 and 4, §5, §6).

Supervisors, the CLI and other storesites use it. Every method takes and
returns Python values (:class:`~hermesx.core.identity.TAD`, ``pb.AtomMeta``) and
raises HermesErrors: the storesite's own error with its kind and message, or
:class:`UnreachableError` / :class:`CallTimeoutError` naming the storesite
and its address.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from hermesx.core.errors import HermesError
from hermesx.core.identity import TAD
from hermesx.core.snapshot import yield_gil
from hermesx.observe import metrics
from hermesx.rpc.convert import tad_from_pb, tad_of, tad_to_pb
from hermesx.rpc.node_client import CALL_ADDRESS
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.status import unary_call
from hermesx.rpc.storesite_batch import MORE_CHECKPOINTS, CheckpointBatcher
from hermesx.rpc.wire import ChannelPool, TLSIdentity

__all__ = [
    "CALL_ADDRESS",
    "CHECKPOINT",
    "CHECKPOINT_DELTA",
    "MORE_CHECKPOINTS",
    "AtomInfo",
    "CheckedSnapshot",
    "CheckpointInfo",
    "DeltaAck",
    "StoredLocation",
    "StoresiteClient",
    "StoresiteInfo",
]

log = logging.getLogger(__name__)

_Reply = TypeVar("_Reply")

# Request kinds of the storesite's call channel (storesite.calls, docs/DESIGN.md §4.1):
# bodies and replies those of PutCheckpoint and PutCheckpointDelta.
CHECKPOINT, CHECKPOINT_DELTA = "checkpoint", "checkpoint-delta"
_MORE = {MORE_CHECKPOINTS: "1"}

# A state larger than two of these goes to the storesite in pieces of this size.
STATE_PIECE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredLocation:
    """Where an atom is, as its storesite knows it.

    ``forwarded_to`` is set when the atom's home moved to another storesite:
    ask that one. ``dormant`` is set only by calls that do not activate.
    """

    tad: TAD
    dormant: bool = False
    forwarded_to: str = ""
    # The incarnation of tad.node the atom is recorded at ("" when unknown).
    incarnation: str = ""


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    guid: str
    tad: TAD
    snapshot: bytes
    meta: pb.AtomMeta
    seq: int
    # CRC-32 of ``snapshot`` and the generation it holds; None when not known.
    checksum: int | None = None
    generation: int | None = None
    incarnation: str = ""


@dataclass(frozen=True, slots=True)
class AtomInfo:
    guid: str
    tad: TAD
    dormant: bool
    meta: pb.AtomMeta
    checkpoints: int


@dataclass(frozen=True, slots=True)
class StoresiteInfo:
    id: str
    atoms: int
    modules: int
    checkpoints: int
    # Since the storesite started: checkpoints stored, of them deltas, group commits.
    checkpoints_written: int = 0
    deltas_written: int = 0
    group_commits: int = 0


def location_from_pb(reply: pb.LocationReply) -> StoredLocation:
    return StoredLocation(tad_of(reply.tad), reply.dormant, reply.forwarded_to, reply.incarnation)


class StoresiteClient:
    """Calls to one storesite; thread-safe, cheap to make and to keep around.

    With ``channels`` it uses that pool's channel to ``address`` (a process
    keeps one pool); without, it opens its own, which :meth:`close` closes.
    ``call`` is the storesite's call channel (its record's ``call``): checkpoints
    go over it unless ``lean`` is False (default: unless ``HERMESX_CALLS=grpc``).
    """

    def __init__(
        self,
        address: str,
        *,
        sid: str = "",
        timeout: float = 5.0,
        tls: TLSIdentity | None = None,
        channels: ChannelPool | None = None,
        call: str | None = None,
        lean: bool | None = None,
        batch: bool = False,
    ) -> None:
        """``tls``: the certificate to show, when not this process's own (a client's).
        ``batch``: the storesite's call channel serves ``checkpoint-batch`` (its record
        lists it): checkpoints ready together travel in one request
        (:mod:`hermesx.rpc.storesite_batch`)."""
        self.address = address
        lean = lean if lean is not None else os.environ.get("HERMESX_CALLS") != "grpc"
        self.call_address = call if lean else None
        self.sid = sid
        self.timeout = timeout
        self._own_channels = channels is None
        self._channels = channels if channels is not None else ChannelPool(tls)
        self._stub = self._channels.stub(address, pbg.StoresiteStub)
        self._peer = f"storesite {sid} at {address}" if sid else f"storesite at {address}"
        self._call_peer = f"storesite {sid} at {call}"
        # Checkpoints on their way over the call channel (shared by with_timeout copies).
        self._flight = _InFlight()
        self._batcher = (
            CheckpointBatcher(self._call_peer) if batch and self.call_address is not None else None
        )

    def close(self) -> None:
        if self._own_channels:
            self._channels.close()

    def __enter__(self) -> StoresiteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        method: Callable[..., _Reply],
        request: Any,
        what: str,
        timeout: float | None = None,
    ) -> _Reply:
        return unary_call(
            method, request, self.timeout if timeout is None else timeout, self._peer, what
        )

    # --------------------------------------------------------------- modules

    def put_module(self, module: bytes) -> str:
        """Store module bytes; returns their hash (hex sha256)."""
        reply = self._call(self._stub.PutModule, pb.ModuleBytes(module=module), "PutModule")
        return str(reply.hash)

    def get_module(self, module_hash: str) -> bytes:
        reply = self._call(
            self._stub.GetModule, pb.ModuleHash(hash=module_hash), f"GetModule({module_hash})"
        )
        return bytes(reply.module)

    # ----------------------------------------------------------------- atoms

    def register_atom(
        self,
        guid: str,
        meta: pb.AtomMeta,
        tad: TAD,
        snapshot: bytes,
        *,
        checksum: int | None = None,
        generation: int | None = None,
        incarnation: str = "",
    ) -> StoredLocation:
        request = pb.RegisterAtomRequest(
            guid=guid,
            meta=meta,
            tad=tad_to_pb(tad),
            snapshot=snapshot,
            checksum=checksum,
            generation=generation,
            incarnation=incarnation,
        )
        return location_from_pb(
            self._call(self._stub.RegisterAtom, request, f"RegisterAtom({guid})")
        )

    def put_checkpoint(
        self,
        guid: str,
        tad: TAD,
        snapshot: bytes,
        seq: int,
        *,
        checksum: int | None = None,
        generation: int | None = None,
        periodic: bool = False,
    ) -> None:
        request = pb.CheckpointRequest(
            guid=guid,
            tad=tad_to_pb(tad),
            snapshot=snapshot,
            seq=seq,
            checksum=checksum,
            generation=generation,
            periodic=periodic,
        )
        self._call(self._stub.PutCheckpoint, request, f"PutCheckpoint({guid})")

    def get_checkpoint(self, guid: str) -> CheckpointInfo:
        """The checkpoint the atom would be restored from (checked by the storesite)."""
        reply = self._call(
            self._stub.GetCheckpoint, pb.GuidRequest(guid=guid), f"GetCheckpoint({guid})"
        )
        return CheckpointInfo(
            reply.guid,
            tad_of(reply.tad),
            reply.snapshot,
            reply.meta,
            reply.seq,
            checksum=reply.checksum if reply.HasField("checksum") else None,
            generation=reply.generation if reply.HasField("generation") else None,
            incarnation=reply.incarnation,
        )

    def locate(self, guid: str, *, timeout: float | None = None) -> StoredLocation:
        """Where the atom is now; the storesite activates a dormant atom first.

        Activation can take longer than a plain lookup: pass a longer
        ``timeout`` when the atom may be dormant.
        """
        metrics.STORESITE_FALLBACKS.inc()  # the invoker's fallback is this process's only Locate
        reply = self._call(self._stub.Locate, pb.GuidRequest(guid=guid), f"Locate({guid})", timeout)
        return location_from_pb(reply)

    def prepare(self, guid: str, source: TAD, destination: str) -> int:
        """Reserve a move; returns the age the atom will have at ``destination``."""
        request = pb.PrepareRequest(guid=guid, source=tad_to_pb(source), destination=destination)
        return int(self._call(self._stub.Prepare, request, f"Prepare({guid})").age)

    def commit(self, guid: str, tad: TAD, snapshot: bytes, *, incarnation: str) -> StoredLocation:
        """Complete a move to ``tad``, staged by the destination's ``incarnation``."""
        request = pb.CommitRequest(
            guid=guid, tad=tad_to_pb(tad), snapshot=snapshot, incarnation=incarnation
        )
        return location_from_pb(self._call(self._stub.Commit, request, f"Commit({guid})"))

    def abort(self, guid: str, age: int) -> None:
        self._call(self._stub.Abort, pb.AbortRequest(guid=guid, age=age), f"Abort({guid})")

    def passivated(self, guid: str, tad: TAD, snapshot: bytes) -> None:
        request = pb.PassivatedRequest(guid=guid, tad=tad_to_pb(tad), snapshot=snapshot)
        self._call(self._stub.Passivated, request, f"Passivated({guid})")

    def put_logs(self, guid: str, lines: bytes) -> None:
        """Keep an atom's log lines (:mod:`hermesx.observe.atomlog`) beside its checkpoints."""
        request = pb.AtomLogLines(guid=guid, lines=lines)
        self._call(self._stub.PutLogs, request, f"PutLogs({guid})")

    def get_logs(self, guid: str) -> tuple[bytes, TAD | None, bool]:
        """The atom's log lines kept here, its location record and whether it is dormant."""
        reply = self._call(self._stub.GetLogs, pb.GuidRequest(guid=guid), f"GetLogs({guid})")
        return bytes(reply.lines), tad_from_pb(reply.tad), reply.dormant

    def forget(self, guid: str) -> None:
        self._call(self._stub.Forget, pb.GuidRequest(guid=guid), f"Forget({guid})")

    def move_home(
        self, guid: str, destination: str, *, timeout: float | None = None
    ) -> StoredLocation:
        request = pb.StoreMoveRequest(guid=guid, destination=destination)
        return location_from_pb(
            self._call(self._stub.MoveHome, request, f"MoveHome({guid})", timeout)
        )

    def adopt_atom(self, data: CheckpointInfo, *, dormant: bool = False) -> StoredLocation:
        """Hand an atom (records + latest checkpoint) to this storesite as its new home.

        The wire has no dormant flag yet: a dormant atom travels with an
        empty node in its TAD.
        """
        tad = TAD("", data.tad.age) if dormant else data.tad
        request = pb.CheckpointData(
            guid=data.guid,
            tad=tad_to_pb(tad),
            snapshot=data.snapshot,
            meta=data.meta,
            seq=data.seq,
            checksum=data.checksum,
            generation=data.generation,
            incarnation="" if dormant else data.incarnation,
        )
        return location_from_pb(
            self._call(self._stub.AdoptAtom, request, f"AdoptAtom({data.guid})")
        )

    def list_atoms(self) -> list[AtomInfo]:
        reply = self._call(self._stub.ListAtoms, pb.Empty(), "ListAtoms")
        return [
            AtomInfo(a.guid, tad_of(a.tad), a.dormant, a.meta, a.checkpoints) for a in reply.atoms
        ]

    def status(self) -> StoresiteInfo:
        reply = self._call(self._stub.Status, pb.Empty(), "Status")
        return StoresiteInfo(
            reply.id,
            reply.atoms,
            reply.modules,
            reply.checkpoints,
            reply.checkpoints_written,
            reply.deltas_written,
            reply.group_commits,
        )

    # ------------------------------------------------- a node's calls: states, moves

    def with_timeout(self, timeout: float) -> StoresiteClient:
        """This client with ``timeout`` as its default, sharing the channel (close the original)."""
        # Not copy.copy: this runs for every checkpoint, and a plain dict copy is a
        # fraction of copy's protocol.
        timed = object.__new__(StoresiteClient)
        timed.__dict__.update(self.__dict__)
        timed.timeout = timeout
        return timed

    def send_checkpoint(
        self, guid: str, tad: TAD, state: CheckedSnapshot, seq: int, *, periodic: bool = False
    ) -> None:
        """:meth:`put_checkpoint` for a state of any size: a large one travels in pieces
        (``PutCheckpointPieces``), so that no single message is built or parsed for the
        whole state: either holds the interpreter long enough to starve a session."""
        request = _state_request(pb.CheckpointRequest, guid, tad, state, seq=seq, periodic=periodic)
        timeout = self.timeout
        if len(state.snapshot) < 2 * STATE_PIECE_BYTES:
            request.snapshot = state.snapshot
            sent, timeout = self._over_calls(CHECKPOINT, request)
            if sent is not None:
                return
        stub = self._stub
        self._send_state(
            request, state, stub.PutCheckpoint, stub.PutCheckpointPieces, "PutCheckpoint", timeout
        )

    def send_delta(
        self,
        guid: str,
        tad: TAD,
        delta: CheckedSnapshot,
        seq: int,
        base: tuple[int, int],
        *,
        periodic: bool = False,
    ) -> DeltaAck:
        """An incremental checkpoint: ``delta`` (hermesx.core.delta, with its own CRC-32)
        on the checkpoint ``base`` = ``(seq, checksum)`` of ``tad``'s age."""
        # Filled in place (this runs for every durable call): a head built apart and
        # passed in would be copied into the request, and keyword arguments parsed.
        request = pb.CheckpointDelta(base_seq=base[0], base_checksum=base[1])
        head = request.head
        head.guid, head.seq, head.snapshot = guid, seq, delta.snapshot
        head.checksum, head.generation, head.periodic = delta.checksum, delta.generation, periodic
        head.tad.node, head.tad.age = tad.node, tad.age
        timeout = self.timeout
        if len(delta.snapshot) < 2 * STATE_PIECE_BYTES:
            sent, timeout = self._over_calls(CHECKPOINT_DELTA, request)
            if sent is not None:
                ack = pb.CheckpointAck.FromString(sent)
                return DeltaAck(ack.stored, ack.checksum, ack.refused)
        reply = self._call(
            self._stub.PutCheckpointDelta, request, f"PutCheckpointDelta({guid})", timeout
        )
        return DeltaAck(reply.stored, reply.checksum, reply.refused)

    def _over_calls(
        self, kind: str, request: pb.CheckpointRequest | pb.CheckpointDelta
    ) -> tuple[bytes | None, float]:
        """The reply's body of ``request`` sent over the storesite's call channel, and the
        time left. No body when it has none, or when no connection to it opens in time
        (then gRPC carries the request, in the time left): as NodeClient's calls."""
        timeout = self.timeout
        if self.call_address is None:
            return None, timeout
        started = time.monotonic()
        peer = self._call_peer
        try:
            connection = self._channels.calls.connection(self.call_address, peer, timeout=timeout)
        except HermesError as err:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise
            log.info("no call connection to %s (%s); checkpointing over gRPC", peer, err)
            return None, left
        left = timeout - (time.monotonic() - started)
        body = request.SerializeToString()
        if self._batcher is not None:
            return self._batcher.call(connection, kind, body, left), left
        with self._flight.counting() as others:
            return connection.call(kind, body, left, _MORE if others else None), left

    def send_passivated(self, guid: str, tad: TAD, state: CheckedSnapshot) -> None:
        """The atom was passivated with ``state`` (a large one in pieces, as
        :meth:`send_checkpoint`); it is dormant at its storesite from now on."""
        request = _state_request(pb.PassivatedRequest, guid, tad, state)
        stub = self._stub
        self._send_state(request, state, stub.Passivated, stub.PassivatedPieces, "Passivated")

    def stage(self, guid: str, tad: TAD, state: CheckedSnapshot) -> None:
        """Stage the checkpoint a move to ``tad`` has once committed (before :meth:`commit`)."""
        request = _state_request(pb.CommitRequest, guid, tad, state, snapshot=state.snapshot)
        self._call(self._stub.Stage, request, f"Stage({guid})")

    def _send_state(
        self,
        request: pb.CheckpointRequest | pb.PassivatedRequest,
        state: CheckedSnapshot,
        whole: Callable[..., Any],
        in_pieces: Callable[..., Any],
        what: str,
        timeout: float | None = None,
    ) -> None:
        """``whole(request)`` with ``request`` carrying ``state``; for a large state,
        ``in_pieces`` with a stream: ``request`` as the head piece, the snapshot after it."""
        if len(state.snapshot) < 2 * STATE_PIECE_BYTES:
            request.snapshot = state.snapshot
            self._call(whole, request, f"{what}({request.guid})", timeout)
            return
        piece = _PIECE_OF[type(request)]
        pieces = (
            piece(head=request) if data is None else piece(data=data)
            for data in _pieces_of(state.snapshot)
        )
        self._call(in_pieces, pieces, f"{what}Pieces({request.guid})", timeout)


class _InFlight:
    """How many requests of a client (and its copies) are under way."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @contextlib.contextmanager
    def counting(self) -> Iterator[int]:
        """Count one more while the block runs; yields how many others are under way."""
        with self._lock:
            others = self._count
            self._count += 1
        try:
            yield others
        finally:
            with self._lock:
                self._count -= 1


@dataclass(frozen=True, slots=True)
class DeltaAck:
    """A storesite's answer to a delta: stored (False: not newer), the checksum of
    its latest snapshot, or why it refused the delta's base (then nothing was stored)."""

    stored: bool
    checksum: int
    refused: str


@dataclass(frozen=True, slots=True)
class CheckedSnapshot:
    """An atom's snapshot, its CRC-32 and the generation (calls completed) it holds."""

    snapshot: bytes
    checksum: int
    generation: int


_Request = TypeVar("_Request")

# The stream message that carries each kind of state request in pieces.
_PIECE_OF: dict[type, Callable[..., Any]] = {
    pb.CheckpointRequest: pb.CheckpointPiece,
    pb.PassivatedRequest: pb.PassivatedPiece,
}


def _state_request(
    kind: Callable[..., _Request], guid: str, tad: TAD, state: CheckedSnapshot, **fields: Any
) -> _Request:
    """A request of type ``kind`` about ``state`` of atom ``guid`` at ``tad`` (no snapshot)."""
    return kind(
        guid=guid,
        tad=tad_to_pb(tad),
        checksum=state.checksum,
        generation=state.generation,
        **fields,
    )


def _pieces_of(snapshot: bytes) -> Iterator[bytes | None]:
    """None (the place of the head piece), then ``snapshot`` in pieces of
    STATE_PIECE_BYTES; the interpreter is let go between pieces."""
    yield None
    view = memoryview(snapshot)
    for offset in range(0, len(view), STATE_PIECE_BYTES):
        yield_gil()
        yield bytes(view[offset : offset + STATE_PIECE_BYTES])
