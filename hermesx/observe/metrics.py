"""Prometheus metrics of nodes, storesites, clients and the gateway (docs/DESIGN.md §12).

Every metric is a module-level object of the process-wide registry: a
process is one node, one storesite or one client, so the metrics need no
owner. The code being measured calls the one-line hooks below (a counter's
``inc``, a histogram's ``observe``): a few hundred nanoseconds, and nothing
is computed for a scrape until it comes. Gauges of a node's or storesite's
state (atoms active, fenced, atoms dormant) are read at scrape time from the
objects :func:`watch_node` and :func:`watch_storesite` are given.

:func:`serve_metrics` starts the HTTP endpoint (``--metrics-listen``);
:func:`exposition` (and :func:`asgi_app`) serve the same from another HTTP
server (the gateway's ``/metrics``, with :func:`gateway_request` counting
its requests).
Labels never carry atom names, GUIDs or method names: they are the caller's
to choose and would make the series unbounded.
"""

from __future__ import annotations

import bisect
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    generate_latest,
    make_asgi_app,
)
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hermesx.core.errors import ConfigurationError
from hermesx.observe import tracing

__all__ = [
    "CALLS",
    "CALLS_HELD",
    "CHECKPOINTS",
    "CHECKPOINT_SECONDS",
    "FORWARDS",
    "MOVED",
    "STORESITE_FALLBACKS",
    "MetricsEndpoint",
    "asgi_app",
    "call_ran",
    "check_listen",
    "exposition",
    "forwarded",
    "gateway_request",
    "moved",
    "registration",
    "serve_metrics",
    "timed",
    "watch_node",
    "watch_storesite",
]

log = logging.getLogger(__name__)

# Latency buckets from 100 µs (a local call) to 30 s (the default deadline).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# ---------------------------------------------------------------- a node's calls


class _CallTally(Collector):
    """``hermesx_calls`` (by outcome) and ``hermesx_call_seconds``: counted on a call's
    path with one lock and plain numbers, made into metric families only when
    scraped. (A prometheus_client counter and histogram take four locks and a
    dozen Python calls per call between them: a share of a plain call's
    microseconds worth saving.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: over every bound
        self._sum = 0.0
        self._outcomes: dict[str, int] = {"ok": 0}
        self._created = time.time()

    def ran(self, seconds: float, outcome: str) -> None:
        # A bucket holds the values at most its bound (Prometheus's "le").
        bucket = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            self._buckets[bucket] += 1
            self._sum += seconds
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1

    def counts(self) -> tuple[dict[str, int], list[int], float]:
        """Calls by outcome, per latency bucket (the last over every bound), seconds."""
        with self._lock:
            return dict(self._outcomes), list(self._buckets), self._sum

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("hermesx_calls", _CALLS_HELP, labels=["outcome"])
        yield HistogramMetricFamily("hermesx_call_seconds", _CALL_SECONDS_HELP)

    def collect(self) -> Iterator[Metric]:
        outcomes, buckets, total = self.counts()
        calls = CounterMetricFamily("hermesx_calls", _CALLS_HELP, labels=["outcome"])
        for outcome, count in sorted(outcomes.items()):
            calls.add_metric([outcome], count, created=self._created)
        yield calls
        cumulative, bounds = 0, []
        # The bounds' labels as prometheus_client's own histograms write them.
        for bound, count in zip((*map(repr, LATENCY_BUCKETS), "+Inf"), buckets, strict=True):
            cumulative += count
            bounds.append((bound, cumulative))
        seconds = HistogramMetricFamily("hermesx_call_seconds", _CALL_SECONDS_HELP)
        seconds.add_metric([], bounds, total)
        yield seconds


_CALLS_HELP = "Invocations that ran in an atom on this node, by outcome (ok or the error kind)"
_CALL_SECONDS_HELP = (
    "Time from a call reaching its atom on this node to its reply (waits, run, checkpoint)"
)
CALLS = _CallTally()
REGISTRY.register(CALLS)
FORWARDS = Counter("hermesx_forwards", "Invocations this node forwarded along a TAD")
MOVED = Counter(
    "hermesx_moved", "Invocations this node answered MOVED (hop limit reached) to the caller"
)
STORESITE_FALLBACKS = Counter(
    "hermesx_storesite_fallbacks",
    "Times this process asked an atom's storesite where it is (a broken or unknown chain)",
)
CALLS_HELD = Counter(
    "hermesx_calls_held",
    "Invocations that waited for a move or passivation of their atom to let it go",
)

# ---------------------------------------------------------------- a node's atoms

CHECKPOINTS = Counter(
    "hermesx_checkpoints", "Checkpoints this node took, by outcome (ok, failed)", ["outcome"]
)
CHECKPOINT_SECONDS = Histogram(
    "hermesx_checkpoint_seconds",
    "Time of a checkpoint from snapshot to the storesite's acknowledgement",
    buckets=LATENCY_BUCKETS,
)
MIGRATIONS = Counter(
    "hermesx_migrations", "Moves of atoms away from this node, by outcome (ok, failed)", ["outcome"]
)
MIGRATION_SECONDS = Histogram(
    "hermesx_migration_seconds",
    "Time of a move from its request to the destination serving",
    buckets=LATENCY_BUCKETS,
)
ACTIVATIONS = Counter(
    "hermesx_activations",
    "Atoms that started serving on this node, by how (move, storesite: dormant or recovered)",
    ["how"],
)
FENCES = Counter(
    "hermesx_fences", "Times this node fenced itself and dropped its atoms (session lost, gave up)"
)

# ---------------------------------------------------------------- a storesite

STORESITE_CHECKPOINTS = Counter(
    "hermesx_storesite_checkpoints",
    "Checkpoints this storesite received, by outcome (ok, failed)",
    ["outcome"],
)
STORESITE_CHECKPOINT_SECONDS = Histogram(
    "hermesx_storesite_checkpoint_seconds",
    "Time to check and store one checkpoint durably",
    buckets=LATENCY_BUCKETS,
)
STORESITE_CHECKPOINT_TRANSPORTS = Counter(
    "hermesx_storesite_checkpoint_requests",
    "Checkpoints this storesite received, by transport (call: the call channel, one a "
    "request; call-batch: the call channel, several atoms' in one request; grpc)",
    ["transport"],
)
STORESITE_ACTIVATIONS = Counter(
    "hermesx_storesite_activations",
    "Atoms this storesite placed on a node, by reason (dormant, recovery)",
    ["reason"],
)
RECOVERIES = Counter(
    "hermesx_recoveries",
    "Atoms of a lost node incarnation this storesite recovered, by outcome (ok, failed)",
    ["outcome"],
)

# ---------------------------------------------------------------- the gateway

GATEWAY_REQUESTS = Counter(
    "hermesx_gateway_requests",
    "HTTP requests the gateway answered, by route template and status code",
    ["route", "status"],
)
GATEWAY_REQUEST_SECONDS = Histogram(
    "hermesx_gateway_request_seconds",
    "Time of an HTTP request through the gateway, by route template",
    ["route"],
    buckets=LATENCY_BUCKETS,
)

F = TypeVar("F", bound=Callable[..., Any])


def call_ran(reply: Any, started: float) -> None:
    """A call ran here: ``reply`` is its ``InvokeReply``, ``started`` its arrival on
    :func:`time.monotonic`'s clock."""
    seconds = time.monotonic() - started
    if reply.WhichOneof("outcome") == "error":
        CALLS.ran(seconds, reply.error.kind or "hermes")
        tracing.note_hop("ran", reply.error.kind)
        return
    # CALLS.ran's work for the common outcome, here: one Python frame less per call.
    calls, bucket = CALLS, bisect.bisect_left(LATENCY_BUCKETS, seconds)
    with calls._lock:
        calls._buckets[bucket] += 1
        calls._sum += seconds
        calls._outcomes["ok"] += 1
    if tracing.ON:
        tracing.note_hop("ran")


def forwarded() -> None:
    """This node forwards a call along its atom's TAD."""
    FORWARDS.inc()
    tracing.note_hop("forward")


def moved() -> None:
    """This node answers a call MOVED: the caller goes on from the TAD it is given."""
    MOVED.inc()
    tracing.note_hop("moved")


def gateway_request(route: str, status: int, started: float) -> None:
    """The gateway answered a request of ``route`` (its template, e.g.
    ``/v1/atoms/{atom}/{method}``: never the path itself) with ``status``; ``started``
    on :func:`time.monotonic`'s clock."""
    GATEWAY_REQUEST_SECONDS.labels(route).observe(time.monotonic() - started)
    GATEWAY_REQUESTS.labels(route, str(status)).inc()


def timed(counter: Counter, seconds: Histogram) -> Callable[[F], F]:
    """Count each call of the decorated function as ``ok`` or ``failed`` (it raised) and
    observe its duration: for operations that take milliseconds (checkpoints, moves)."""

    def decorate(fn: F) -> F:
        ok, failed = counter.labels("ok"), counter.labels("failed")

        @functools.wraps(fn)
        def measured(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                failed.inc()
                raise
            seconds.observe(time.monotonic() - started)
            ok.inc()
            return result

        return cast(F, measured)

    return decorate


class _StateCollector(Collector):
    """Gauges read at scrape time from ``read`` (name, help, [(labels, value)])."""

    def __init__(
        self, read: Callable[[], Iterable[tuple[str, str, list[tuple[dict[str, str], float]]]]]
    ) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            gauges = list(self._read())
        except Exception as exc:  # a scrape must not break on a closing store
            log.debug("metrics: state not readable: %s", exc)
            return
        for name, help_text, samples in gauges:
            labels = sorted(samples[0][0]) if samples and samples[0][0] else []
            family = GaugeMetricFamily(name, help_text, labels=labels)
            for values, value in samples:
                family.add_metric([values[k] for k in labels], value)
            yield family


_watched: list[Collector] = []


def _watch(
    read: Callable[[], Iterable[tuple[str, str, list[tuple[dict[str, str], float]]]]],
) -> None:
    # One process is one node or one storesite; a second watch (a test
    # building several in one process) replaces the first.
    for old in _watched:
        REGISTRY.unregister(old)
    _watched.clear()
    collector = _StateCollector(read)
    REGISTRY.register(collector)
    _watched.append(collector)


def watch_node(
    atoms: Callable[[], int], staged: Callable[[], int], fenced: Callable[[], bool]
) -> None:
    """Report a node's state at each scrape: active atoms, staged copies, fenced."""

    def read() -> Iterator[tuple[str, str, list[tuple[dict[str, str], float]]]]:
        yield "hermesx_active_atoms", "Atoms active (serving) on this node", [({}, atoms())]
        yield (
            "hermesx_staged_copies",
            "Copies staged here by a move or activation",
            [({}, staged())],
        )
        yield (
            "hermesx_fenced",
            "1 while this node is fenced (must not serve)",
            [({}, float(fenced()))],
        )

    _watch(read)


def watch_storesite(count: Callable[[], tuple[int, int]]) -> None:
    """Report a storesite's atoms at each scrape: ``count`` gives (active, dormant)."""

    def read() -> Iterator[tuple[str, str, list[tuple[dict[str, str], float]]]]:
        active, dormant = count()
        yield (
            "hermesx_storesite_atoms",
            "Atoms whose home is this storesite, by state (active, dormant)",
            [({"state": "active"}, active), ({"state": "dormant"}, dormant)],
        )

    _watch(read)


_serving: list[str] = []


def registration() -> dict[str, str]:
    """What a process adds to its name-service record: where its metrics are, if served."""
    return {"metrics": _serving[-1]} if _serving else {}


def check_listen(listen: str) -> None:
    """Refuse a ``--metrics-listen`` that is not ``off``, ``auto`` or HOST:PORT."""
    if listen in ("", "off", "auto"):
        return
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(f"--metrics-listen {listen!r} is not HOST:PORT, 'auto' or 'off'")


class MetricsEndpoint:
    """The HTTP endpoint serving ``/metrics`` in a thread of its own."""

    def __init__(self, listen: str) -> None:
        check_listen(listen)
        host, _, port = listen.rpartition(":")
        try:
            self._server, self._thread = _start_http_server(int(port), host)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {listen}: {exc}") from exc
        self.address = f"{host}:{self._server.server_port}"
        _serving.append(self.address)

    def close(self) -> None:
        if self.address in _serving:
            _serving.remove(self.address)
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(listen: str, default_host: str) -> MetricsEndpoint | None:
    """Start the endpoint ``--metrics-listen`` asks for.

    ``off`` (or empty): none; ``auto``: ``default_host`` (the host the process
    serves gRPC on) on a free port; otherwise HOST:PORT.
    """
    if listen in ("", "off"):
        return None
    if listen == "auto":
        listen = f"{default_host or '127.0.0.1'}:0"
    endpoint = MetricsEndpoint(listen)
    log.info("metrics on http://%s/metrics", endpoint.address)
    return endpoint


def asgi_app() -> Any:
    """An ASGI app serving this process's metrics (mounted, it answers at ``/metrics/``)."""
    return make_asgi_app(REGISTRY)


def exposition() -> tuple[bytes, str]:
    """This process's metrics in Prometheus's text format, and its content type: the body
    of a ``GET /metrics`` answered by a route of one's own (the gateway's)."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
