"""The one mapping between HermesErrors and gRPC statuses (docs/DESIGN.md §9).

A server that fails a call with a :class:`HermesError` aborts the RPC with a
status code chosen by :func:`status_for` and details ``"<kind>: <message>"``;
the calling side rebuilds the same error class from them
(:func:`error_from_rpc`). A failure of the transport itself becomes an error
naming the peer and the call: the peer down or unreachable
(:class:`UnreachableError`), past the deadline (:class:`CallTimeoutError`),
refused by TLS or by the peer's role check (:class:`NotAuthorizedError`), a
message over the size limit (:class:`PayloadTooLargeError`). Nodes,
storesites, clients and the CLI all use these functions, as servers and as
callers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc

from hermesx.core.errors import (
    CallTimeoutError,
    CommunicationError,
    HermesError,
    MigrationError,
    NameNotFoundError,
    NamingError,
    NotAuthorizedError,
    PayloadTooLargeError,
    StorageError,
    UnreachableError,
    error_from_wire,
)
from hermesx.rpc.proto import hermesx_pb2 as pb

__all__ = [
    "abort_with",
    "error_from_rpc",
    "pb_error",
    "status_for",
    "transport_error",
    "unary_call",
]

_Reply = TypeVar("_Reply")


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


def pb_error(err: HermesError) -> pb.Error:
    """``err`` as the Error message a reply carries in place of a result."""
    return pb.Error(kind=err.kind, message=str(err))


def abort_with(context: grpc.ServicerContext, err: HermesError) -> NoReturn:
    """End an RPC with ``err``, keeping its kind for the caller."""
    context.abort(status_for(err), f"{err.kind}: {err}")
    raise AssertionError("context.abort returned")  # pragma: no cover


def error_from_rpc(exc: grpc.RpcError, peer: str, method: str = "") -> HermesError:
    """Rebuild the HermesError a peer sent, or describe the transport failure.

    ``peer`` names the other side (``"storesite s1 at HOST:PORT"``), ``method``
    the RPC when the caller knows it, so the message says which call to which
    process failed.
    """
    # Failed calls are also grpc.Call objects; other RpcErrors carry no status.
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or ""
    kind, sep, message = details.partition(": ")
    if sep and kind and " " not in kind:
        err = error_from_wire(kind, message)
        if type(err) is not HermesError or kind == HermesError.kind:
            return err
    return transport_error(code, peer, method, details)


def transport_error(
    code: grpc.StatusCode | None, peer: str, method: str = "", details: str = ""
) -> HermesError:
    """The error for a failure of the transport itself, gRPC's or the call channel's
    (which names its failures by the same codes): the peer unreachable, the deadline
    passed, TLS or the role check refused us, a message over the limit, cut short."""
    call = f"{method} to {peer}" if method else peer
    if code == grpc.StatusCode.UNAVAILABLE:
        return UnreachableError(f"{peer} is unreachable ({details or 'connection failed'})")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CallTimeoutError(f"{call} did not answer in time")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return NotAuthorizedError(f"{peer} refused us: {details or 'not authenticated'}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PayloadTooLargeError(f"{peer} refused the message: {details}")
    return CommunicationError(f"{call} failed: {details or code}")


def unary_call(
    rpc: Callable[..., _Reply],
    request: Any,
    timeout: float | None,
    peer: str,
    method: str,
    metadata: Any = None,
) -> _Reply:
    """Make one unary call of a stub; a failure is raised as :func:`error_from_rpc` names it."""
    try:
        if metadata is not None:
            return rpc(request, timeout=timeout, metadata=metadata)
        return rpc(request, timeout=timeout)
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, peer, method) from exc
    except ValueError as exc:
        # The channel was closed before the call could start (ChannelPool.drop: the
        # peer left the cluster or stopped answering): the call never left, so it is
        # safe to go on elsewhere, as for a peer that cannot be reached.
        # grpcio says "Cannot invoke RPC on closed channel!" or, with the reason its
        # close gave, "Cannot invoke RPC: Channel closed!".
        said = str(exc).lower()
        if "closed channel" not in said and "channel closed" not in said:
            raise
        raise UnreachableError(f"{method} to {peer}: {exc}") from exc
