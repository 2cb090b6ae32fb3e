"""The storesite's call channel: checkpoints over lean frames (docs/DESIGN.md §4.1, §6).

The storesite mounts a :class:`~hermesx.rpc.callserver.CallServer` next to
its gRPC server with three request kinds, a whole checkpoint and a delta
checkpoint, whose bodies are the ``CheckpointRequest`` / ``CheckpointDelta``
of protos/hermesx.proto and whose replies are ``Empty`` / ``CheckpointAck``,
and a batch of those of several atoms (:mod:`storesite.batches`, the
kinds its record lists as ``CALL_KINDS``).
Both run exactly what gRPC's ``PutCheckpoint`` / ``PutCheckpointDelta`` run
(:func:`storesite.server.put_checkpoint`), for the same roles; a checkpoint
is acknowledged only after its group commit. A lone checkpoint runs on its
connection's own thread (no hand-off to a worker: that thread checks it
and, finding no batch being committed, commits it itself). One whose node
says it has others in flight (the request's meta ``MORE_CHECKPOINTS``)
runs on the pool of workers gRPC uses, as do those of a connection already
running one: its connection's thread reads on, so that the checkpoints
arriving together are committed together. A lone checkpoint that must wait
for another sender's batch has another thread read its connection meanwhile
(``GroupCommitter.waiting``).
A state too large for one frame still goes over gRPC in pieces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import TypeVar

from hermesx.core.addresses import advertised_address, split_host_port
from hermesx.core.errors import ConfigurationError, HermesError, StorageError, UnreachableError
from hermesx.observe import metrics
from hermesx.rpc.callserver import Call, CallServer, parse_body, yield_reader
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.storesite_batch import CHECKPOINT_BATCH, decode_batch, encode_outcomes
from hermesx.rpc.storesite_client import CHECKPOINT, CHECKPOINT_DELTA, MORE_CHECKPOINTS
from hermesx.rpc.wire import TLSIdentity
from storesite.batches import put_batch
from storesite.server import put_checkpoint, put_checkpoint_delta
from storesite.service import Storesite

__all__ = ["CALL_KINDS_SERVED", "call_listen_address", "lone_checkpoint", "serve_calls"]

# The kinds this listener serves, as its record lists them (CALL_KINDS).
CALL_KINDS_SERVED = [CHECKPOINT, CHECKPOINT_DELTA, CHECKPOINT_BATCH]

log = logging.getLogger(__name__)


def call_listen_address(call_listen: str, listen: str) -> str | None:
    """Where the call channel listens: ``call_listen`` itself, None for ``off``, and for
    ``auto`` the gRPC listen host on the next port (any port when gRPC's is 0)."""
    if call_listen == "off":
        return None
    if call_listen != "auto":
        _, sep, port = call_listen.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ConfigurationError(
                f"--call-listen {call_listen!r} is not HOST:PORT, 'auto' or 'off'"
            )
        return call_listen
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + 1 if port.isdigit() and int(port) else 0}"


def serve_calls(
    site: Storesite,
    listen: str,
    *,
    auto: bool,
    workers: Executor,
    tls: TLSIdentity | None,
    advertise: str = "",
) -> tuple[CallServer, str]:
    """Start storesite ``site``'s call listener on ``listen`` (with ``auto``, any free port
    when that one is taken), its requests run by ``workers``; it and the address peers
    dial: on the host the storesite advertises (docs/DESIGN.md §8)."""
    what = f"storesite {site.sid}"
    server = CallServer(what, workers=workers, tls=tls)

    def checkpoint(call: Call) -> bytes:
        request = parse_body(pb.CheckpointRequest, call)
        reply: bytes = _run(site, call, lambda: put_checkpoint(site, request)).SerializeToString()
        return reply

    def delta(call: Call) -> bytes:
        request = parse_body(pb.CheckpointDelta, call)
        ack = _run(site, call, lambda: put_checkpoint_delta(site, request))
        reply: bytes = ack.SerializeToString()
        return reply

    def batch(call: Call) -> bytes:
        requests = decode_batch(call.body)
        return encode_outcomes(_run(site, call, lambda: put_batch(site, requests)))

    server.register(CHECKPOINT, checkpoint, "Storesite/PutCheckpoint", inline=lone_checkpoint)
    server.register(CHECKPOINT_BATCH, batch, "Storesite/PutCheckpointDelta", inline=lone_checkpoint)
    server.register(CHECKPOINT_DELTA, delta, "Storesite/PutCheckpointDelta", inline=lone_checkpoint)
    site.store.committer.waiting = yield_reader
    try:
        bound = server.start(listen, any_port_else=auto)
        port = split_host_port(bound, f"{what}: the call channel")[1] or 0
        host = split_host_port(advertise, f"{what}: --advertise")[0] if advertise else ""
        return server, advertised_address(bound, port, host, f"{what}: the call channel")
    except (UnreachableError, ConfigurationError):
        server.stop()
        raise


_R = TypeVar("_R")
# Made once: a label's lookup costs a lock and a dict per checkpoint.
_ON_CALLS = metrics.STORESITE_CHECKPOINT_TRANSPORTS.labels("call")


def lone_checkpoint(meta: Mapping[str, str] | None) -> bool:
    """Whether a checkpoint request's sender has no other checkpoint in flight."""
    return not (meta and meta.get(MORE_CHECKPOINTS))


def _run(site: Storesite, call: Call, body: Callable[[], _R]) -> _R:
    """``body()``; an unforeseen failure answers as gRPC's servicer does (a storage error)."""
    if call.kind != CHECKPOINT_BATCH:  # a batch counts its checkpoints (storesite.batches)
        _ON_CALLS.inc()
    try:
        return body()
    except HermesError:
        raise
    except Exception as exc:
        log.exception("%s failed unexpectedly", call.kind)
        raise StorageError(f"storesite {site.sid} failed in {call.kind}: {exc}") from exc
