"""Fixtures of the fault suite: the soak switch and the report of every scenario.

Clusters come from the harness (``start_cluster`` in hermesx/testing/plugin.py).

Every scenario records a :class:`faultkit.Tally`; at the end of the run a
table with one row per scenario (attempted / acknowledged / failed with a
clear error / lost / executed twice) is printed and written as JSON to
``fault-summary.json`` in pytest's base temporary directory.

Every test here is an integration test with a per-test timeout of
``TIMEOUT_S`` unless its module marks another.

The long soak runs only with ``--soak`` (or ``FAULT_SOAK=1`` when this
conftest is not an initial one, e.g. ``pytest tests``): a ``HERMESX_*``
variable would be refused by the node processes, which reject unknown ones.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import pytest
from faultkit import Report, Tally

_TALLIES: list[Tally] = []
TIMEOUT_S = 240
HERE = pathlib.Path(__file__).parent
SUMMARY_FILE = "fault-summary.json"


def soak_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("soak", default=False)) or os.environ.get("FAULT_SOAK") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent != HERE:
            continue
        item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT_S))


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    if not soak_enabled(request.config):
        pytest.skip("the soak runs only with --soak (or FAULT_SOAK=1)")
    return True


@pytest.fixture
def report() -> Report:
    """Record a scenario's tally for the summary table."""
    return _TALLIES.append


COLUMNS = ("attempted", "acknowledged", "failed_clear", "lost", "twice")
# Shown as a column when a scenario counted it (the chaos test samples every node).
TWO_COPIES = "two_serving_copies"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _TALLIES:
        return
    tr = terminalreporter
    tr.section("fault suite: what happened to every call")
    width = max(len(t.scenario) for t in _TALLIES)
    copies = any(TWO_COPIES in t.notes for t in _TALLIES)
    header = [*COLUMNS, "two_copies"] if copies else list(COLUMNS)
    tr.write_line(f"{'scenario':<{width}}  " + "  ".join(f"{c:>12}" for c in header))
    for t in sorted(_TALLIES, key=lambda t: t.scenario):
        cells = [getattr(t, c) for c in COLUMNS]
        if copies:
            cells.append(t.notes.get(TWO_COPIES, "-"))
        tr.write_line(f"{t.scenario:<{width}}  " + "  ".join(f"{c:>12}" for c in cells))
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    path = pathlib.Path(base) / SUMMARY_FILE
    path.write_text(json.dumps([t.as_dict() for t in _TALLIES], indent=2, sort_keys=True))
    if any(t.lost < 0 for t in _TALLIES):
        tr.write_line("(-1: the atom could not be read at the end, so lost / twice are unknown)")
    tr.write_line(f"(details: {path})")
