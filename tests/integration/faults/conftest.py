"""Fixtures of the fault suite: clusters that may reach ZooKeeper through a proxy, the report.

Every scenario records a :class:`faultkit.Tally`; at the end of the run a
table with one row per scenario (attempted / acknowledged / failed with a
clear error / lost / executed twice) is printed and written as JSON to
``fault-summary.json`` in pytest's base temporary directory.

The long soak runs only with ``--soak`` (or ``FAULT_SOAK=1`` when this
conftest is not an initial one, e.g. ``pytest tests``): a ``HERMESX_*``
variable would be refused by the node processes, which reject unknown ones.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import pytest
from faultkit import ClusterStarter, Tally

from hermesx.local.cluster import LocalCluster, NodeSpec

_TALLIES: list[Tally] = []
_counter = 0
SUMMARY_FILE = "fault-summary.json"


def soak_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("soak", default=False)) or os.environ.get("FAULT_SOAK") == "1"


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    if not soak_enabled(request.config):
        pytest.skip("the soak runs only with --soak (or FAULT_SOAK=1)")
    return True


@pytest.fixture
def report() -> Callable[[Tally], None]:
    """Record a scenario's tally for the summary table."""
    return _TALLIES.append


@pytest.fixture
def start_cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ClusterStarter]:
    """Start local clusters for one test; all stopped at its end (logs printed on failure).

    ``node_zk`` gives a node its own ZooKeeper connect string (a proxy the
    test can cut); the others use ``zk``. ``storesites``: their ids (one, s1,
    unless a scenario moves atoms' homes).
    """
    global _counter
    started: list[LocalCluster] = []
    home = tmp_path_factory.mktemp("fault-home")
    old_home = os.environ.get("HERMESX_HOME")
    os.environ["HERMESX_HOME"] = str(home)

    def start(
        nodes: Sequence[str],
        *,
        zk: str,
        session_timeout: float = 2.0,
        node_zk: dict[str, str] | None = None,
        storesites: Sequence[str] = ("s1",),
    ) -> LocalCluster:
        global _counter
        _counter += 1
        cluster = LocalCluster(
            f"fault{os.getpid()}x{_counter}", session_timeout=session_timeout, test_hooks=True
        )
        started.append(cluster)
        special = node_zk or {}
        cluster.up([NodeSpec(n) for n in nodes if n not in special], storesites=storesites, zk=zk)
        for node, connect in special.items():
            # LocalCluster hands every process its own zk string; swap it for this node only.
            cluster.zk = connect
            try:
                cluster.start_node(NodeSpec(node))
            finally:
                cluster.zk = zk
                cluster.save()
        if special:
            cluster.wait_registered(nodes=list(nodes))
        return cluster

    yield start
    failed = getattr(request.node, "_fault_failed", False)
    for cluster in started:
        if failed:
            _dump_logs(cluster)
        cluster.down()
    if old_home is None:
        os.environ.pop("HERMESX_HOME", None)
    else:
        os.environ["HERMESX_HOME"] = old_home


def _dump_logs(cluster: LocalCluster) -> None:
    for log in sorted(cluster.dir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-60:]
        print(f"\n===== {cluster.name}/{log.name} (last {len(lines)} lines) =====")
        print("\n".join(lines))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    if outcome.get_result().failed:
        item._fault_failed = True  # type: ignore[attr-defined]


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
