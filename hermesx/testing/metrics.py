"""Reading a part's Prometheus metrics in tests, as Prometheus reads them (docs/DESIGN.md §12)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from hermesx.local.cluster import LocalCluster

__all__ = ["Scrape", "metric_value", "scrape"]

# Family name -> {(("__name__", sample name), *sorted labels): value}.
Scrape = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(cluster: LocalCluster, part: str) -> Scrape:
    """Every sample ``part`` (``node-n1``, ``storesite-s1``) serves at its metrics endpoint."""
    url = f"http://{cluster.metrics[part]}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    families: Scrape = {}
    for family in text_string_to_metric_families(text):
        samples = families.setdefault(family.name, {})
        for sample in family.samples:
            samples[(("__name__", sample.name), *sorted(sample.labels.items()))] = sample.value
    return families


def metric_value(families: Scrape, name: str, **labels: str) -> float:
    """The sample ``name`` with ``labels`` (0 when the series has no sample yet)."""
    family = name
    for suffix in ("_total", "_count", "_sum"):
        family = family.removesuffix(suffix)
    return families.get(family, {}).get((("__name__", name), *sorted(labels.items())), 0.0)
