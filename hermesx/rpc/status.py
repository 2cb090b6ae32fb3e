"""Errors across the storesite's gRPC boundary (DESIGN.md §9).

A server that fails a call with a :class:`HermesError` aborts the RPC with
status details ``"<kind>: <message>"``; the calling side rebuilds the same
error class from them. Transport failures (peer down, deadline passed) become
:class:`UnreachableError` / :class:`CallTimeoutError` naming the peer. The
storesite uses this both as a server and as a client of storesites and
supervisors.
"""

from __future__ import annotations

import grpc

from hermesx.core.errors import (
    CallTimeoutError,
    CommunicationError,
    HermesError,
    MigrationError,
    NameNotFoundError,
    NamingError,
    StorageError,
    UnreachableError,
    error_from_wire,
)

__all__ = ["error_from_rpc", "status_for"]


def status_for(err: HermesError) -> grpc.StatusCode:
    """The gRPC status a servicer aborts with for ``err``."""
    if isinstance(err, NameNotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(err, CallTimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(err, CommunicationError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(err, MigrationError):
        return grpc.StatusCode.ABORTED
    if isinstance(err, StorageError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(err, NamingError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.UNKNOWN


def error_from_rpc(exc: grpc.RpcError, peer: str, method: str) -> HermesError:
    """Rebuild the HermesError a peer sent, or describe the transport failure.

    ``peer`` names the other side (``"storesite S at HOST:PORT"``), ``method``
    the RPC, so the message says which call to which process failed.
    """
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or ""
    kind, sep, message = details.partition(": ")
    if sep:
        err = error_from_wire(kind, message)
        if type(err) is not HermesError or kind == HermesError.kind:
            return err
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CallTimeoutError(f"{method} to {peer} timed out")
    if code == grpc.StatusCode.UNAVAILABLE:
        return UnreachableError(f"{peer} is unreachable ({method}): {details}")
    return CommunicationError(f"{method} to {peer} failed: {code}: {details}")
