"""The metrics module: its endpoint, its address checks, its timing hook (docs/DESIGN.md §12)."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import Counter, Histogram

from hermesx.core.errors import ConfigurationError
from hermesx.observe import metrics


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:", ":9100", "127.0.0.1:99999"])
def test_a_bad_metrics_address_is_refused_naming_it(listen: str) -> None:
    with pytest.raises(ConfigurationError, match="--metrics-listen"):
        metrics.serve_metrics(listen, "127.0.0.1")


def test_off_serves_nothing_and_auto_serves_on_a_free_port_of_the_host() -> None:
    assert metrics.serve_metrics("off", "127.0.0.1") is None
    endpoint = metrics.serve_metrics("auto", "127.0.0.1")
    assert endpoint is not None
    try:
        assert endpoint.address.startswith("127.0.0.1:")
        assert metrics.registration() == {"metrics": endpoint.address}
        url = f"http://{endpoint.address}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert b"hermesx_calls_total" in answer.read()
        with pytest.raises(ConfigurationError, match="cannot serve metrics"):
            metrics.serve_metrics(endpoint.address, "127.0.0.1")  # the port is taken
    finally:
        endpoint.close()
    assert metrics.registration() == {}


def test_timed_counts_successes_and_failures_and_times_only_what_finished() -> None:
    count = Counter("test_timed_ops", "test", ["outcome"])
    seconds = Histogram("test_timed_ops_seconds", "test")

    @metrics.timed(count, seconds)
    def operation(fail: bool) -> str:
        if fail:
            raise RuntimeError("no")
        return "done"

    assert operation(False) == "done"
    with pytest.raises(RuntimeError):
        operation(True)
    counted = {
        s.labels["outcome"]: s.value
        for family in count.collect()
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert counted == {"ok": 1, "failed": 1}
    samples = {s.name: s.value for family in seconds.collect() for s in family.samples}
    assert samples["test_timed_ops_seconds_count"] == 1
