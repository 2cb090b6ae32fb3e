"""gRPC plumbing shared by nodes, storesites and clients (DESIGN.md §4, §9).

Errors cross the wire as gRPC status details of the form ``<kind>: <message>``
so the receiving side rebuilds the same :class:`HermesError` class. Transport
failures become :class:`UnreachableError` / :class:`CallTimeoutError` naming
the peer. Channels are cached per address: opening one costs milliseconds,
reusing one costs nothing.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc

from hermesx.core.errors import (
    CallTimeoutError,
    CommunicationError,
    HermesError,
    NotAuthorizedError,
    PayloadTooLargeError,
    UnreachableError,
    error_from_wire,
)
from hermesx.core.identity import TAD
from hermesx.rpc.proto import hermesx_pb2 as pb

S = TypeVar("S")

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ChannelPool",
    "TLSIdentity",
    "abort_with",
    "add_server_port",
    "error_from_rpc",
    "open_channel",
    "pb_error",
    "server_interceptors",
    "set_process_tls",
    "tad_from_pb",
    "tad_to_pb",
]

# Snapshots of large atoms travel in one message; 16 MiB states compress but
# can still be large, so allow well above that.
MAX_MESSAGE_BYTES = 256 * 2**20

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 0),
    # Retry a dead peer soon instead of after a long reconnect backoff. The
    # minimum is also the floor of a connection attempt's deadline: a TLS
    # handshake over a slow link needs several round trips, so keep it long.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 5000),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
]


def tad_to_pb(tad: TAD) -> pb.TAD:
    return pb.TAD(node=tad.node, age=tad.age)


def tad_from_pb(msg: pb.TAD) -> TAD | None:
    """The TAD in ``msg``, or None when the field was left empty."""
    if not msg.node:
        return None
    return TAD(msg.node, int(msg.age))


def pb_error(err: HermesError) -> pb.Error:
    return pb.Error(kind=err.kind, message=str(err))


def abort_with(context: grpc.ServicerContext, err: HermesError) -> NoReturn:
    """End an RPC with ``err``, keeping its kind for the caller."""
    code = grpc.StatusCode.UNKNOWN
    if isinstance(err, UnreachableError):
        code = grpc.StatusCode.UNAVAILABLE
    elif isinstance(err, CallTimeoutError):
        code = grpc.StatusCode.DEADLINE_EXCEEDED
    context.abort(code, f"{err.kind}: {err}")
    raise AssertionError("context.abort returned")  # pragma: no cover


def error_from_rpc(exc: grpc.RpcError, peer: str) -> HermesError:
    """Translate a failed RPC to ``peer`` (a description like ``node n1 at ADDR``)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or ""
    kind, sep, message = details.partition(": ")
    if sep and kind and " " not in kind and code not in (None,):
        rebuilt = error_from_wire(kind, message)
        if type(rebuilt) is not HermesError:
            return rebuilt
    if code == grpc.StatusCode.UNAVAILABLE:
        return UnreachableError(f"{peer} is unreachable ({details or 'connection failed'})")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CallTimeoutError(f"{peer} did not answer in time")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return NotAuthorizedError(f"{peer} refused us: {details or 'not authenticated'}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PayloadTooLargeError(f"{peer} refused the message: {details}")
    return CommunicationError(f"{peer} failed: {details or code}")


@dataclass(frozen=True, slots=True)
class TLSIdentity:
    """Who this process is in its cluster: the certificate directory and its name there."""

    directory: pathlib.Path
    name: str
    cluster: str


# A node or storesite process has one identity, set at start-up; every channel
# it opens without an explicit identity uses it.
_process_tls: TLSIdentity | None = None
_credentials: dict[TLSIdentity, grpc.ChannelCredentials] = {}
_credentials_lock = threading.Lock()


def set_process_tls(identity: TLSIdentity | None) -> None:
    global _process_tls
    _process_tls = identity


def open_channel(
    address: str,
    options: list[tuple[str, Any]] | None = None,
    tls: TLSIdentity | None = None,
) -> grpc.Channel:
    """A channel to ``address``: mutual TLS when this process has a cluster identity."""
    identity = tls or _process_tls
    opts = list(options if options is not None else CHANNEL_OPTIONS)
    if identity is None:
        return grpc.insecure_channel(address, options=opts)
    from hermesx.rpc import security

    with _credentials_lock:
        creds = _credentials.get(identity)
        if creds is None:
            creds = _credentials[identity] = security.channel_credentials(
                identity.directory, identity.name
            )
    return grpc.secure_channel(address, creds, options=[*opts, *security.channel_options()])


def add_server_port(server: grpc.Server, listen: str, tls: TLSIdentity | None) -> int:
    """Bind ``listen``; with TLS, clients must show a certificate of the cluster CA."""
    if tls is None:
        return int(server.add_insecure_port(listen))
    from hermesx.rpc import security

    creds = security.server_credentials(tls.directory, tls.name)
    return int(server.add_secure_port(listen, creds))


def server_interceptors(tls: TLSIdentity | None, server: str) -> list[grpc.ServerInterceptor]:
    """With TLS, refuse and log every call whose certificate is not of this cluster."""
    if tls is None:
        return []
    from hermesx.rpc import security

    return [security.PeerCheckInterceptor(tls.cluster, server=server)]


class ChannelPool:
    """One gRPC channel per address, shared by all threads, and its stubs.

    A stub is cached too: building one costs ~45 µs, as much as a tenth of a
    whole remote call.
    """

    def __init__(self, tls: TLSIdentity | None = None) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[tuple[str, object], Any] = {}

    def stub(self, address: str, kind: Callable[[grpc.Channel], S]) -> S:
        key = (address, kind)
        found = self._stubs.get(key)
        if found is None:
            found = self._stubs[key] = kind(self.get(address))
        return found

    def get(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is not None:
            return channel
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = open_channel(address, CHANNEL_OPTIONS, self._tls)
                self._channels[address] = channel
            return channel

    def drop(self, address: str) -> None:
        with self._lock:
            channel = self._channels.pop(address, None)
            for key in [k for k in self._stubs if k[0] == address]:
                del self._stubs[key]
        if channel is not None:
            channel.close()

    def close(self) -> None:
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
            self._stubs.clear()
        for channel in channels:
            channel.close()
