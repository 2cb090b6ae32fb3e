"""Channels and TLS plumbing shared by nodes, storesites and clients (docs/DESIGN.md §4, §9).

Every channel to a node or a storesite comes from a :class:`ChannelPool`
(one per process, or per client), with the one set of options in
:data:`CHANNEL_OPTIONS`: opening a channel costs milliseconds, reusing one
nothing. A process with a cluster identity (:func:`set_process_tls`) speaks
mutual TLS on every channel it opens. The typed clients
(:mod:`hermesx.rpc.node_client`, :mod:`hermesx.rpc.storesite_client`) call
through the pool; errors are mapped in :mod:`hermesx.rpc.status`.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

if TYPE_CHECKING:
    from hermesx.rpc.callclient import CallPool

S = TypeVar("S")

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ChannelPool",
    "TLSIdentity",
    "add_server_port",
    "open_channel",
    "server_interceptors",
    "set_process_tls",
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
    """One gRPC channel per address, shared by all threads, and its stubs; and the
    call channel's connections (:attr:`calls`), closed along with them.

    A stub is cached too: building one costs ~45 µs, as much as a tenth of a
    whole remote call.
    """

    def __init__(self, tls: TLSIdentity | None = None) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[tuple[str, object], Any] = {}
        self._calls: CallPool | None = None

    @property
    def calls(self) -> CallPool:
        """Connections of the call channel (docs/DESIGN.md §4.1), with this pool's identity."""
        if self._calls is None:
            from hermesx.rpc.callclient import CallPool

            with self._lock:
                if self._calls is None:
                    self._calls = CallPool(self._tls or _process_tls)
        return self._calls

    def stub(self, address: str, kind: Callable[[grpc.Channel], S]) -> S:
        key = (address, kind)
        found = self._stubs.get(key)
        if found is None:
            channel = self.get(address)
            found = kind(channel)
            with self._lock:
                # Kept only while the channel is still the pool's: one dropped meanwhile
                # (drop: the peer left) must not leave a stub of a closed channel behind.
                if self._channels.get(address) is channel:
                    found = self._stubs.setdefault(key, found)
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
        """Close the channel or call connection to ``address``: its calls in flight end."""
        if self._calls is not None:
            self._calls.drop(address)
        with self._lock:
            channel = self._channels.pop(address, None)
            for key in [k for k in self._stubs if k[0] == address]:
                del self._stubs[key]
        if channel is not None:
            channel.close()

    def close(self) -> None:
        if self._calls is not None:
            self._calls.close()
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
            self._stubs.clear()
        for channel in channels:
            channel.close()
