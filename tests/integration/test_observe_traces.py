"""OpenTelemetry spans of a call across its hops, exported to a real OTLP receiver (§12)."""

from __future__ import annotations

import json
import pathlib
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.testing.cli import cluster_env, run_hermesx
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration


class Collector(otlp_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping every span it is sent, with its service."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = _attrs(resource_spans.resource.attributes).get("service.name", "")
                for scope in resource_spans.scope_spans:
                    self.spans.extend((service, span) for span in scope.spans)
        return otlp.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[tuple[str, Any]]:
        with self._lock:
            return [(s, span) for s, span in self.spans if span.trace_id == trace_id]


def _attrs(attributes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, str]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    otlp_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def traced(cluster_factory: Any, collector: tuple[Collector, str]) -> LocalCluster:
    """Three nodes exporting spans to the collector (named by --otlp-endpoint), quickly."""
    _, endpoint = collector
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        specs = [NodeSpec(n, options=("--otlp-endpoint", endpoint)) for n in ("n1", "n2", "n3")]
        cluster: LocalCluster = cluster_factory(specs)
    return cluster


def test_a_call_forwarded_twice_gives_one_trace_whose_node_spans_match_its_hops(
    traced: LocalCluster, collector: tuple[Collector, str], atoms: dict[str, pathlib.Path]
) -> None:
    spans, endpoint = collector
    with Client(traced.zk, traced.name) as client:
        client.create(atoms["counter"], name="traced", on="n1")
        client.migrate("traced", "n2")
        client.migrate("traced", "n3")
    # The CLI exports its own span through the standard variable.
    env = cluster_env(traced, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    argv = ("invoke", "traced", "incr", "1", "--via", "n1", "--trace", "--json")
    done = run_hermesx(env, *argv)
    assert done.returncode == 0, done.stderr
    hops = [(h["node"], h["event"]) for h in json.loads(done.stdout)["trace"]]
    node_hops = [h for h in hops if h[1] in ("forward", "ran", "moved")]
    assert node_hops == [("n1", "forward"), ("n2", "forward"), ("n3", "ran")], hops

    def client_span() -> Any:
        found = [
            span
            for service, span in spans.spans
            if service == "hermesx-cli"
            and _attrs(span.attributes).get("hermesx.target") == "traced"
        ]
        return found[-1] if found else None

    root = wait_until(client_span, timeout=15, what="the CLI's span at the collector")

    def whole_trace() -> list[tuple[str, Any]] | None:
        trace = spans.trace(root.trace_id)
        return trace if len(trace) >= 4 else None

    trace = wait_until(whole_trace, timeout=15, what="the nodes' spans of the call")
    by_id = {span.span_id: (service, span) for service, span in trace}
    node_spans = sorted(
        (span for service, span in trace if service == "hermesx-node"),
        key=lambda span: _attrs(span.attributes)["hermesx.hops"],
    )
    seen = [
        (_attrs(s.attributes)["hermesx.node"], _attrs(s.attributes)["hermesx.hop"])
        for s in node_spans
    ]
    assert seen == node_hops
    # Each hop's span is the child of the one before: the context went with the call.
    parents = [by_id[s.parent_span_id][1].name for s in node_spans]
    assert parents == ["hermesx.invoke", "hermesx.node.invoke", "hermesx.node.invoke"]
    assert node_spans[1].parent_span_id == node_spans[0].span_id
    assert node_spans[2].parent_span_id == node_spans[1].span_id
