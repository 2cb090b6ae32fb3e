"""The test suite's root: the shared harness and the ``--soak`` option.

Fixtures (the run's ZooKeeper, clusters, clients, atoms) and the log dumps of
failed tests come from the harness's pytest plugin, hermesx/testing/plugin.py.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["hermesx.testing.plugin"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", action="store_true", default=False, help="run the long fault soak (minutes)"
    )
