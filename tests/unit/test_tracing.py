"""Tracing: off it is not set up at all; on, the context survives a plain map (DESIGN.md §12)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_without_an_endpoint_nothing_is_set_up_and_no_hook_makes_a_span() -> None:
    out = run(
        """
        import sys
        from hermesx.observe import tracing
        from hermesx.routing.invoker import Invoker
        def dispatch(request):
            return request
        assert tracing.configure("test") is False
        assert tracing.outgoing() is None
        assert tracing.server_interceptors() == []
        assert tracing.traced_dispatch("n1", dispatch) is dispatch
        assert tracing.inject({}) == {} and tracing.extract({"traceparent": "x"}) is None
        tracing.note_hop("ran")
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """
    )
    assert out == "[]"


def test_the_context_travels_in_a_plain_map_to_the_next_hop() -> None:
    out = run(
        """
        from opentelemetry import trace
        from hermesx.observe import tracing
        assert tracing.configure("test", "n1", "http://127.0.0.1:9")
        carried = {}
        def hop(request):
            tracing.inject(carried)
            return trace.get_current_span().get_span_context().trace_id
        class Request:
            guid, method, request_id, hops = "s1:ab", "incr", "r1", 0
        first = tracing.traced_dispatch("n1", hop)(Request())
        with tracing.with_context(carried):
            second = tracing.traced_dispatch("n2", hop)(Request())
        print(first == second, "traceparent" in carried)
        import os
        os._exit(0)
        """
    )
    assert out == "True True"
