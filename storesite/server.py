"""The Storesite gRPC service (docs/DESIGN.md §4, §5, §6).

:class:`StoresiteServicer` maps the wire onto :class:`storesite.service.Storesite`;
a HermesError aborts the RPC with details ``"<kind>: <message>"``.
:class:`StoresiteServer` runs it on a port; :mod:`storesite.process` runs
the whole storesite process around it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import TypeVar

import grpc

from hermesx.core.addresses import advertised_address
from hermesx.core.errors import (
    ConfigurationError,
    HermesError,
    StorageError,
)
from hermesx.observe import metrics
from hermesx.rpc.convert import tad_of, tad_to_pb
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.status import abort_with
from hermesx.rpc.storesite_client import CheckpointInfo, StoredLocation
from hermesx.rpc.wire import CHANNEL_OPTIONS, TLSIdentity, add_server_port, server_interceptors
from storesite.records import Provenance
from storesite.service import Storesite

__all__ = ["StoresiteServer", "StoresiteServicer", "put_checkpoint", "put_checkpoint_delta"]

log = logging.getLogger(__name__)

_Reply = TypeVar("_Reply")


def _location(location: StoredLocation) -> pb.LocationReply:
    return pb.LocationReply(
        tad=tad_to_pb(location.tad),
        dormant=location.dormant,
        forwarded_to=location.forwarded_to,
        incarnation=location.incarnation,
    )


def _no_head() -> pb.Empty:
    raise StorageError("a checkpoint sent in pieces must start with its request (head)")


def put_checkpoint(site: Storesite, request: pb.CheckpointRequest) -> pb.Empty:
    """A whole checkpoint, acknowledged once durable (its group commit): the work of
    ``PutCheckpoint`` whichever transport carried it (docs/DESIGN.md §4.1, §6)."""
    site.put_checkpoint(
        request.guid, tad_of(request.tad), request.snapshot, request.seq, Provenance.of(request)
    )
    return pb.Empty()


def put_checkpoint_delta(site: Storesite, request: pb.CheckpointDelta) -> pb.CheckpointAck:
    """An incremental checkpoint: the work of ``PutCheckpointDelta`` (as :func:`put_checkpoint`)."""
    head = request.head
    outcome = site.put_checkpoint_delta(
        head.guid,
        tad_of(head.tad),
        head.snapshot,
        head.seq,
        Provenance.of(head),
        (request.base_seq, request.base_checksum),
    )
    return pb.CheckpointAck(
        stored=outcome.stored, checksum=outcome.checksum, refused=outcome.refused
    )


class StoresiteServicer(pbg.StoresiteServicer):
    """The wire face of one :class:`Storesite`."""

    def __init__(self, site: Storesite) -> None:
        self.site = site

    def _run(
        self, context: grpc.ServicerContext, method: str, body: Callable[[], _Reply]
    ) -> _Reply:
        try:
            return body()
        except HermesError as err:
            log.debug("%s failed: %s: %s", method, err.kind, err)
            abort_with(context, err)
        except Exception as exc:
            log.exception("%s failed unexpectedly", method)
            context.abort(
                grpc.StatusCode.INTERNAL,
                f"storage: storesite {self.site.sid} failed in {method}: {exc}",
            )
            raise

    def _done(
        self, context: grpc.ServicerContext, method: str, action: Callable[[], object]
    ) -> pb.Empty:
        """Run ``action`` as :meth:`_run` does; the reply is empty."""

        def body() -> pb.Empty:
            action()
            return pb.Empty()

        return self._run(context, method, body)

    def PutModule(self, request: pb.ModuleBytes, context: grpc.ServicerContext) -> pb.ModuleHash:
        return self._run(
            context, "PutModule", lambda: pb.ModuleHash(hash=self.site.put_module(request.module))
        )

    def GetModule(self, request: pb.ModuleHash, context: grpc.ServicerContext) -> pb.ModuleBytes:
        return self._run(
            context,
            "GetModule",
            lambda: pb.ModuleBytes(module=self.site.get_module(request.hash)),
        )

    def RegisterAtom(
        self, request: pb.RegisterAtomRequest, context: grpc.ServicerContext
    ) -> pb.LocationReply:
        return self._run(
            context,
            "RegisterAtom",
            lambda: _location(
                self.site.register_atom(
                    request.guid,
                    request.meta,
                    tad_of(request.tad),
                    request.snapshot,
                    Provenance.of(request),
                )
            ),
        )

    def PutCheckpoint(
        self, request: pb.CheckpointRequest, context: grpc.ServicerContext
    ) -> pb.Empty:
        metrics.STORESITE_CHECKPOINT_TRANSPORTS.labels("grpc").inc()
        return self._run(context, "PutCheckpoint", lambda: put_checkpoint(self.site, request))

    def PutCheckpointPieces(
        self, request_iterator: Iterator[pb.CheckpointPiece], context: grpc.ServicerContext
    ) -> pb.Empty:
        """PutCheckpoint of a snapshot sent in pieces: the pieces are joined, then
        the request is handled exactly as PutCheckpoint handles it."""
        request = pb.CheckpointRequest()
        if not self._join_pieces(request_iterator, request, "PutCheckpointPieces", context):
            return pb.Empty()
        return self.PutCheckpoint(request, context)

    def PutCheckpointDelta(
        self, request: pb.CheckpointDelta, context: grpc.ServicerContext
    ) -> pb.CheckpointAck:
        metrics.STORESITE_CHECKPOINT_TRANSPORTS.labels("grpc").inc()
        return self._run(
            context, "PutCheckpointDelta", lambda: put_checkpoint_delta(self.site, request)
        )

    def _join_pieces(
        self,
        pieces: Iterator[pb.CheckpointPiece] | Iterator[pb.PassivatedPiece],
        request: pb.CheckpointRequest | pb.PassivatedRequest,
        method: str,
        context: grpc.ServicerContext,
    ) -> bool:
        """Fill ``request`` from its head piece and the snapshot from all pieces."""
        parts: list[bytes] = []
        has_head = False
        for piece in pieces:
            if not has_head:
                if not piece.HasField("head"):
                    break
                request.CopyFrom(piece.head)
                has_head = True
            parts.append(piece.data)
        if not has_head:
            self._run(context, method, _no_head)
            return False
        request.snapshot = b"".join(parts)
        return True

    def GetCheckpoint(
        self, request: pb.GuidRequest, context: grpc.ServicerContext
    ) -> pb.CheckpointData:
        def body() -> pb.CheckpointData:
            ck = self.site.get_checkpoint(request.guid)
            return pb.CheckpointData(
                guid=ck.guid,
                tad=tad_to_pb(ck.tad),
                snapshot=ck.snapshot,
                meta=ck.meta,
                seq=ck.seq,
                checksum=ck.checksum,
                generation=ck.generation if ck.generation >= 0 else None,
            )

        return self._run(context, "GetCheckpoint", body)

    def Locate(self, request: pb.GuidRequest, context: grpc.ServicerContext) -> pb.LocationReply:
        return self._run(context, "Locate", lambda: _location(self.site.locate(request.guid)))

    def Prepare(self, request: pb.PrepareRequest, context: grpc.ServicerContext) -> pb.PrepareReply:
        return self._run(
            context,
            "Prepare",
            lambda: pb.PrepareReply(
                age=self.site.prepare(request.guid, tad_of(request.source), request.destination)
            ),
        )

    def Commit(self, request: pb.CommitRequest, context: grpc.ServicerContext) -> pb.LocationReply:
        return self._run(
            context,
            "Commit",
            lambda: _location(
                self.site.commit(
                    request.guid,
                    tad_of(request.tad),
                    request.snapshot,
                    Provenance.of(request),
                )
            ),
        )

    def Stage(self, request: pb.CommitRequest, context: grpc.ServicerContext) -> pb.Empty:
        return self._done(
            context,
            "Stage",
            lambda: self.site.stage(
                request.guid, tad_of(request.tad), request.snapshot, Provenance.of(request)
            ),
        )

    def Abort(self, request: pb.AbortRequest, context: grpc.ServicerContext) -> pb.Empty:
        return self._done(context, "Abort", lambda: self.site.abort(request.guid, request.age))

    def Passivated(self, request: pb.PassivatedRequest, context: grpc.ServicerContext) -> pb.Empty:
        return self._done(
            context,
            "Passivated",
            lambda: self.site.passivated(
                request.guid, tad_of(request.tad), request.snapshot, Provenance.of(request)
            ),
        )

    def PassivatedPieces(
        self, request_iterator: Iterator[pb.PassivatedPiece], context: grpc.ServicerContext
    ) -> pb.Empty:
        """Passivated with a snapshot sent in pieces (see PutCheckpointPieces)."""
        request = pb.PassivatedRequest()
        if not self._join_pieces(request_iterator, request, "PassivatedPieces", context):
            return pb.Empty()
        return self.Passivated(request, context)

    def Forget(self, request: pb.GuidRequest, context: grpc.ServicerContext) -> pb.Empty:
        return self._done(context, "Forget", lambda: self.site.forget(request.guid))

    def MoveHome(
        self, request: pb.StoreMoveRequest, context: grpc.ServicerContext
    ) -> pb.LocationReply:
        return self._run(
            context,
            "MoveHome",
            lambda: _location(self.site.move_home(request.guid, request.destination)),
        )

    def AdoptAtom(
        self, request: pb.CheckpointData, context: grpc.ServicerContext
    ) -> pb.LocationReply:
        check = Provenance.of(request)
        data = CheckpointInfo(
            request.guid,
            tad_of(request.tad),
            request.snapshot,
            request.meta,
            request.seq,
            checksum=check.checksum,
            generation=check.generation,
            incarnation=check.incarnation,
        )
        return self._run(context, "AdoptAtom", lambda: _location(self.site.adopt_atom(data)))

    def ListAtoms(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.AtomList:
        def body() -> pb.AtomList:
            return pb.AtomList(
                atoms=[
                    pb.AtomRecord(
                        guid=s.guid,
                        tad=tad_to_pb(s.location),
                        dormant=s.dormant,
                        meta=s.meta,
                        checkpoints=s.checkpoints,
                    )
                    for s in self.site.list_atoms()
                ]
            )

        return self._run(context, "ListAtoms", body)

    def PutLogs(self, request: pb.AtomLogLines, context: grpc.ServicerContext) -> pb.Empty:
        return self._done(
            context, "PutLogs", lambda: self.site.put_logs(request.guid, request.lines)
        )

    def GetLogs(self, request: pb.GuidRequest, context: grpc.ServicerContext) -> pb.StoredAtomLogs:
        def body() -> pb.StoredAtomLogs:
            lines, state = self.site.get_logs(request.guid)
            return pb.StoredAtomLogs(
                lines=lines, tad=tad_to_pb(state.location), dormant=state.dormant
            )

        return self._run(context, "GetLogs", body)

    def Status(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.StoresiteStatus:
        def body() -> pb.StoresiteStatus:
            st = self.site.status()
            return pb.StoresiteStatus(
                id=self.site.sid,
                atoms=st.atoms,
                modules=st.modules,
                checkpoints=st.checkpoints,
                checkpoints_written=st.checkpoints_written,
                deltas_written=st.deltas_written,
                group_commits=st.group_commits,
            )

        return self._run(context, "Status", body)


class StoresiteServer:
    """A gRPC server for one :class:`Storesite` on ``listen`` (``HOST:PORT``, port 0 = any)."""

    def __init__(
        self,
        site: Storesite,
        listen: str,
        *,
        workers: int = 16,
        tls: TLSIdentity | None = None,
        advertise: str = "",
    ) -> None:
        self.site = site
        self._listen = listen
        self._advertise = advertise
        self._tls = tls
        # One pool of workers for gRPC and the call channel (storesite.calls).
        self.pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="storesite-rpc")
        self._server = grpc.server(
            self.pool,
            options=CHANNEL_OPTIONS,
            interceptors=server_interceptors(tls, f"storesite {site.sid}"),
        )
        pbg.add_StoresiteServicer_to_server(StoresiteServicer(site), self._server)
        self.address = ""

    def start(self) -> str:
        """Bind and start serving; returns the ``HOST:PORT`` peers dial (docs/DESIGN.md §8)."""
        _, sep, _ = self._listen.rpartition(":")
        if not sep:
            raise ConfigurationError(f"listen address {self._listen!r} is not HOST:PORT")
        try:
            port = add_server_port(self._server, self._listen, self._tls)
        except RuntimeError as exc:
            raise ConfigurationError(
                f"storesite {self.site.sid} cannot listen on {self._listen}: {exc}"
            ) from exc
        if port == 0:
            raise ConfigurationError(f"storesite {self.site.sid} cannot listen on {self._listen}")
        try:
            self.address = advertised_address(
                self._listen, port, self._advertise, f"storesite {self.site.sid}"
            )
        except ConfigurationError:
            self._server.stop(0)
            raise
        self._server.start()
        log.info("storesite %s listening on %s", self.site.sid, self.address)
        return self.address

    def stop(self, grace: float = 1.0) -> None:
        self._server.stop(grace).wait()
