"""The Storesite gRPC service and the storesite process (DESIGN.md §4, §5, §6, §8).

:class:`StoresiteServicer` maps the wire onto :class:`storesite.service.Storesite`;
a HermesError aborts the RPC with details ``"<kind>: <message>"``.
:class:`StoresiteServer` runs it on a port. :func:`serve` is the process
main behind ``hermesx storesite serve`` and ``python -m storesite``: it opens
the data dir, joins the name service as ``storesites/<id>``, watches the
nodes for recovery and blocks until SIGTERM / SIGINT.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from typing import TypeVar

import grpc

from hermesx.core.errors import (
    ConfigurationError,
    HermesError,
    NameNotFoundError,
    NamingError,
    StorageError,
    error_from_wire,
)
from hermesx.core.identity import validate_name
from hermesx.rpc.convert import tad_of, tad_to_pb
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
from hermesx.rpc.security import zk_auth, zk_readers
from hermesx.rpc.status import abort_with
from hermesx.rpc.storesite_client import CheckpointInfo, Location
from hermesx.rpc.wire import (
    CHANNEL_OPTIONS,
    TLSIdentity,
    add_server_port,
    server_interceptors,
    set_process_tls,
)
from nameservice import NameService, NameServiceError, NameTakenError
from storesite.placement import Member
from storesite.service import Storesite
from storesite.store import DEFAULT_MAX_CHECKPOINT_BYTES, AtomStore

__all__ = ["NameServiceDirectory", "StoresiteServer", "StoresiteServicer", "serve"]

log = logging.getLogger(__name__)

_Reply = TypeVar("_Reply")

# Seconds to wait for a crashed predecessor's registration to expire.
REGISTER_PATIENCE = 15.0


def _check(
    request: pb.RegisterAtomRequest
    | pb.CheckpointRequest
    | pb.CommitRequest
    | pb.PassivatedRequest
    | pb.CheckpointData,
) -> dict[str, int | None]:
    """The snapshot's checksum and generation a request carries (None: not sent)."""
    return {
        "checksum": request.checksum if request.HasField("checksum") else None,
        "generation": request.generation if request.HasField("generation") else None,
    }


def _location(location: Location) -> pb.LocationReply:
    return pb.LocationReply(
        tad=tad_to_pb(location.tad),
        dormant=location.dormant,
        forwarded_to=location.forwarded_to,
        incarnation=location.incarnation,
    )


def _no_head() -> pb.Empty:
    raise StorageError("a checkpoint sent in pieces must start with its request (head)")


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
                    incarnation=request.incarnation,
                    **_check(request),
                )
            ),
        )

    def PutCheckpoint(
        self, request: pb.CheckpointRequest, context: grpc.ServicerContext
    ) -> pb.Empty:
        def body() -> pb.Empty:
            self.site.put_checkpoint(
                request.guid,
                tad_of(request.tad),
                request.snapshot,
                request.seq,
                periodic=request.periodic,
                **_check(request),
            )
            return pb.Empty()

        return self._run(context, "PutCheckpoint", body)

    def PutCheckpointPieces(
        self, request_iterator: Iterator[pb.CheckpointPiece], context: grpc.ServicerContext
    ) -> pb.Empty:
        """PutCheckpoint of a snapshot sent in pieces: the pieces are joined, then
        the request is handled exactly as PutCheckpoint handles it."""
        request = pb.CheckpointRequest()
        if not self._join_pieces(request_iterator, request, "PutCheckpointPieces", context):
            return pb.Empty()
        return self.PutCheckpoint(request, context)

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
                    incarnation=request.incarnation,
                    **_check(request),
                )
            ),
        )

    def Stage(self, request: pb.CommitRequest, context: grpc.ServicerContext) -> pb.Empty:
        def body() -> pb.Empty:
            self.site.stage(request.guid, tad_of(request.tad), request.snapshot, **_check(request))
            return pb.Empty()

        return self._run(context, "Stage", body)

    def Abort(self, request: pb.AbortRequest, context: grpc.ServicerContext) -> pb.Empty:
        def body() -> pb.Empty:
            self.site.abort(request.guid, request.age)
            return pb.Empty()

        return self._run(context, "Abort", body)

    def Passivated(self, request: pb.PassivatedRequest, context: grpc.ServicerContext) -> pb.Empty:
        def body() -> pb.Empty:
            self.site.passivated(
                request.guid, tad_of(request.tad), request.snapshot, **_check(request)
            )
            return pb.Empty()

        return self._run(context, "Passivated", body)

    def PassivatedPieces(
        self, request_iterator: Iterator[pb.PassivatedPiece], context: grpc.ServicerContext
    ) -> pb.Empty:
        """Passivated with a snapshot sent in pieces (see PutCheckpointPieces)."""
        request = pb.PassivatedRequest()
        if not self._join_pieces(request_iterator, request, "PassivatedPieces", context):
            return pb.Empty()
        return self.Passivated(request, context)

    def Forget(self, request: pb.GuidRequest, context: grpc.ServicerContext) -> pb.Empty:
        def body() -> pb.Empty:
            self.site.forget(request.guid)
            return pb.Empty()

        return self._run(context, "Forget", body)

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
        data = CheckpointInfo(
            request.guid,
            tad_of(request.tad),
            request.snapshot,
            request.meta,
            request.seq,
            incarnation=request.incarnation,
            **_check(request),
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

    def Status(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.StoresiteStatus:
        def body() -> pb.StoresiteStatus:
            st = self.site.status()
            return pb.StoresiteStatus(
                id=self.site.sid, atoms=st.atoms, modules=st.modules, checkpoints=st.checkpoints
            )

        return self._run(context, "Status", body)


class StoresiteServer:
    """A gRPC server for one :class:`Storesite` on ``listen`` (``HOST:PORT``, port 0 = any)."""

    def __init__(
        self, site: Storesite, listen: str, *, workers: int = 16, tls: TLSIdentity | None = None
    ) -> None:
        self.site = site
        self._listen = listen
        self._tls = tls
        self._server = grpc.server(
            futures.ThreadPoolExecutor(workers, thread_name_prefix="storesite-rpc"),
            options=CHANNEL_OPTIONS,
            interceptors=server_interceptors(tls, f"storesite {site.sid}"),
        )
        pbg.add_StoresiteServicer_to_server(StoresiteServicer(site), self._server)
        self.address = ""

    def start(self) -> str:
        """Bind and start serving; returns the bound ``HOST:PORT``."""
        host, sep, _ = self._listen.rpartition(":")
        if not sep or not host:
            raise ConfigurationError(f"listen address {self._listen!r} is not HOST:PORT")
        try:
            port = add_server_port(self._server, self._listen, self._tls)
        except RuntimeError as exc:
            raise ConfigurationError(
                f"storesite {self.site.sid} cannot listen on {self._listen}: {exc}"
            ) from exc
        if port == 0:
            raise ConfigurationError(f"storesite {self.site.sid} cannot listen on {self._listen}")
        self._server.start()
        self.address = f"{host}:{port}"
        log.info("storesite %s listening on %s", self.site.sid, self.address)
        return self.address

    def stop(self, grace: float = 1.0) -> None:
        self._server.stop(grace).wait()


class NameServiceDirectory:
    """:class:`Directory` over the name service (package ``nameservice``).

    Name-service errors become the hermesx error of the same kind.
    """

    def __init__(self, names: NameService) -> None:
        self._names = names

    def nodes(self) -> Mapping[str, Member]:
        try:
            nodes = self._names.nodes()
        except NameServiceError as exc:
            raise _naming_error(exc, "cannot list live nodes") from exc
        return nodes

    def live_incarnation(self, node: str) -> str | None:
        try:
            return self._names.node_incarnation(node)
        except NameServiceError as exc:
            raise _naming_error(exc, f"cannot read node {node}'s registration") from exc

    def storesite_address(self, sid: str) -> str:
        try:
            members = self._names.storesites()
        except NameServiceError as exc:
            raise _naming_error(exc, f"cannot find storesite {sid}") from exc
        member = members.get(sid)
        if member is None:
            raise NameNotFoundError(f"no live storesite {sid} in the name service")
        return member.address

    def set_home(self, guid: str, sid: str) -> None:
        try:
            self._names.set_home(guid, sid)
        except NameServiceError as exc:
            raise _naming_error(exc, f"cannot record storesite {sid} as home of {guid}") from exc


def _naming_error(exc: NameServiceError, what: str) -> HermesError:
    err = error_from_wire(exc.kind, f"{what}: {exc}")
    return err if type(err) is not HermesError else NamingError(f"{what}: {exc}")


def serve(
    sid: str,
    listen: str,
    data_dir: pathlib.Path,
    zk: str,
    cluster: str,
    *,
    max_checkpoint_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES,
    ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    tls_dir: pathlib.Path | None = None,
    init: bool = False,
) -> None:
    """Run storesite ``sid`` until SIGTERM / SIGINT (or ``stop`` is set).

    ``ready`` is called with the bound address once the storesite is
    registered in the name service and watching the nodes. The store in
    ``data_dir`` must exist and be whole unless ``init`` asks for a new one
    (see :class:`AtomStore`); it is checked before anything joins the cluster.
    """
    validate_name(sid, "storesite id")
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        # A fault no check foresaw (a store file cut while mapped: SIGBUS) at
        # least leaves a traceback in the log instead of a silent death.
        with contextlib.suppress(OSError, ValueError, AttributeError, RuntimeError):
            faulthandler.enable()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    tls = TLSIdentity(tls_dir, sid, cluster) if tls_dir is not None else None
    set_process_tls(tls)
    store = AtomStore(sid, data_dir, init=init, max_checkpoint_bytes=max_checkpoint_bytes)
    try:
        names = NameService(
            zk,
            cluster,
            auth=zk_auth(tls_dir) if tls_dir is not None else None,
            readers=zk_readers(tls_dir) if tls_dir is not None else (),
        )
    except NameServiceError as exc:
        store.close()
        raise _naming_error(exc, f"storesite {sid} cannot use cluster {cluster!r}") from exc
    site = Storesite(store, NameServiceDirectory(names))
    server = StoresiteServer(site, listen, tls=tls)
    try:
        try:
            names.start()
            address = server.start()
            _register(names, sid, address, stop)
            names.add_state_listener(_reregister_after_loss(names, sid, address, stop))
            names.watch_nodes(site.on_nodes)
        except NameServiceError as exc:
            raise _naming_error(
                exc, f"storesite {sid} cannot join the name service at {zk} (cluster {cluster})"
            ) from exc
        log.info("storesite %s serving %s (cluster %s) from %s", sid, address, cluster, data_dir)
        if ready is not None:
            ready(address)
        stop.wait()
        log.info("storesite %s stopping", sid)
    finally:
        server.stop()
        site.close()
        names.close()
        store.close()


def _register(names: NameService, sid: str, address: str, stop: threading.Event) -> None:
    """Register ``storesites/<sid>``, waiting out the entry of our own previous run.

    A storesite restarted right after a crash finds its old ephemeral entry
    until that session expires (a few seconds); only a live other process
    keeps it longer.
    """
    deadline = time.monotonic() + REGISTER_PATIENCE
    while True:
        try:
            names.register_storesite(sid, address, data={"pid": os.getpid()})
            return
        except NameTakenError:
            if time.monotonic() > deadline or stop.is_set():
                raise
            log.info("storesite id %s is still registered; waiting for it to expire", sid)
            stop.wait(0.5)


def _reregister_after_loss(
    names: NameService, sid: str, address: str, stop: threading.Event
) -> Callable[[str], None]:
    """A state listener that registers again once a new session replaces a lost one."""
    lost = threading.Event()

    def again() -> None:
        try:
            _register(names, sid, address, stop)
            log.info("storesite %s registered again after its session was lost", sid)
        except NameServiceError as exc:
            log.error("storesite %s could not register again: %s", sid, exc)

    def listener(state: str) -> None:
        if state == "lost":
            lost.set()
        elif state == "connected" and lost.is_set():
            lost.clear()
            # Not on the name service's delivery thread: registering may wait.
            threading.Thread(target=again, name=f"register-{sid}", daemon=True).start()

    return listener
