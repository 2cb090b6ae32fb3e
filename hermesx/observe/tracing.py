"""OpenTelemetry spans of invocations, carried with the call (docs/DESIGN.md §12).

Off unless configured: :func:`configure` sets up the SDK only when an OTLP
endpoint is named (``--otlp-endpoint`` or the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``).
Until then :data:`ON` is False, the SDK is never imported, no hook makes a
span object, and :func:`outgoing` gives gRPC no metadata: the invocation path
pays one global read per hook.

On, a call gives these spans, one trace across its hops:

- ``hermesx.invoke`` (kind CLIENT) in the caller — a client, or a node whose
  atom calls another — around the whole call with its retries;
- ``hermesx.node.invoke`` (kind SERVER) on every node the call reaches, with
  the attributes ``hermesx.node`` and ``hermesx.hop`` — ``forward``, ``ran``
  or ``moved``, the events ``--trace`` lists for the same hops.

The context travels as W3C ``traceparent`` / ``tracestate`` entries of the
gRPC metadata of ``Supervisor/Invoke`` (:func:`outgoing` on the way out, the
:func:`server_interceptors` on the way in); :func:`inject` and
:func:`extract` do the same on a plain dict for any other channel.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    import grpc

__all__ = [
    "ON",
    "configure",
    "extract",
    "inject",
    "note_hop",
    "outgoing",
    "server_interceptors",
    "shutdown",
    "traced_dispatch",
    "traced_invoke",
    "with_context",
]

F = TypeVar("F", bound=Callable[..., Any])

# True once configure() set up an exporter: every hook tests this first.
ON = False
_tracer: Any = None
_provider: Any = None
_propagator: Any = None
_node = ""
_CARRIED = ("traceparent", "tracestate")


def configure(service: str, node: str = "", endpoint: str = "") -> bool:
    """Export spans of this process by OTLP/gRPC when an endpoint is named; True if on.

    ``endpoint`` wins over the standard environment variables; ``service``
    becomes the resource's ``service.name``, ``node`` the ``hermesx.node`` of
    every span this process makes.
    """
    global ON, _tracer, _provider, _propagator, _node
    endpoint = (
        endpoint
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    )
    if not endpoint or ON:
        return ON
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    attributes = {"service.name": service}
    if node:
        attributes["hermesx.node"] = node
    _provider = TracerProvider(resource=Resource.create(attributes))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _tracer = _provider.get_tracer("hermesx")
    _propagator = TraceContextTextMapPropagator()
    _node = node
    ON = True
    return True


def shutdown() -> None:
    """Send the spans still buffered (a process that ends)."""
    if _provider is not None:
        _provider.shutdown()


# ------------------------------------------------------------------ the context on the wire


def inject(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current span's context to ``carrier`` (when tracing is on); returns it."""
    if ON:
        _propagator.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str]) -> Any:
    """The context a caller sent in ``carrier`` (None when off or when there is none)."""
    if not ON or not any(key in carrier for key in _CARRIED):
        return None
    return _propagator.extract(carrier)


@contextmanager
def with_context(carrier: Mapping[str, str]) -> Iterator[None]:
    """Run the block in the caller's context sent in ``carrier`` (a channel's metadata map)."""
    parent = extract(carrier)
    if parent is None:
        yield
        return
    from opentelemetry import context

    token = context.attach(parent)
    try:
        yield
    finally:
        context.detach(token)


def outgoing() -> tuple[tuple[str, str], ...] | None:
    """gRPC metadata carrying the current context; None (no metadata at all) when off."""
    if not ON:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return tuple(carrier.items()) or None


def server_interceptors() -> list[grpc.ServerInterceptor]:
    """The interceptors a gRPC server adds to take its callers' context (none when off)."""
    if not ON:
        return []
    import grpc

    class ContextInterceptor(grpc.ServerInterceptor):
        """Runs each handler in the context its caller sent in the metadata."""

        def __init__(self) -> None:
            self._wrapped: dict[str, tuple[Any, Any]] = {}

        def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
            handler = continuation(details)
            if handler is None or handler.unary_unary is None:
                return handler
            # continuation() gives the same handler object per method: wrap it once.
            known = self._wrapped.get(details.method)
            if known is not None and known[0] is handler:
                return known[1]
            inner = handler.unary_unary

            def behavior(request: Any, context: grpc.ServicerContext) -> Any:
                carrier = {k: str(v) for k, v in context.invocation_metadata() if k in _CARRIED}
                with with_context(carrier):
                    return inner(request, context)

            wrapped = handler._replace(unary_unary=behavior)
            self._wrapped[details.method] = (handler, wrapped)
            return wrapped

    return [ContextInterceptor()]


# ------------------------------------------------------------------ spans


def traced_invoke(fn: F) -> F:
    """Decorates ``Invoker.invoke``: with tracing on, the whole call is one CLIENT span."""

    @functools.wraps(fn)
    def invoke(self: Any, target: str, method: str, args: bytes, **kwargs: Any) -> Any:
        if not ON:
            return fn(self, target, method, args, **kwargs)
        from opentelemetry.trace import SpanKind

        attributes = {"hermesx.target": target, "hermesx.method": method}
        if _node:
            attributes["hermesx.caller_node"] = _node
        with _tracer.start_as_current_span(
            "hermesx.invoke", kind=SpanKind.CLIENT, attributes=attributes
        ):
            return fn(self, target, method, args, **kwargs)

    return cast(F, invoke)


def traced_dispatch(node: str, dispatch: F) -> F:
    """A node's dispatch of invocations, each in a SERVER span (``dispatch`` itself when off)."""
    if not ON:
        return dispatch
    from opentelemetry.trace import SpanKind

    @functools.wraps(dispatch)
    def invoke(request: Any) -> Any:
        attributes = {
            "hermesx.node": node,
            "hermesx.guid": request.guid,
            "hermesx.method": request.method,
            "hermesx.request_id": request.request_id,
            "hermesx.hops": request.hops,
        }
        with _tracer.start_as_current_span(
            "hermesx.node.invoke", kind=SpanKind.SERVER, attributes=attributes
        ):
            return dispatch(request)

    return cast(F, invoke)


def note_hop(event: str, error: str = "") -> None:
    """What the current node did with the call (``forward``, ``ran``, ``moved``)."""
    if not ON:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    span.set_attribute("hermesx.hop", event)
    if error:
        span.set_attribute("hermesx.error", error)
