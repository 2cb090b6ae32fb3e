"""Network faults made by the kernel: nftables rules in a network namespace the test owns.

Each test creates a namespace (``ip netns add hxf-<pid>-<n>``), runs one
scenario of netns_scenario.py inside it (ZooKeeper, storesite, nodes and
clients all live there, on that namespace's own 127.0.0.1), and deletes the
namespace afterwards, which removes its nftables table with it. No rule ever
touches the host's network.

Scenario 7 cuts one node from ZooKeeper with a drop rule (docs/DESIGN.md §6: the
node fences itself before its atom is recovered elsewhere, and two copies
never serve). Scenario 8 drops 10% of the packets of the node's and the
storesite's ports under load (docs/DESIGN.md §4: calls complete through TCP
retransmission and client retries, nothing lost, nothing run twice).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from faultkit import Report, Tally, assert_nothing_lost

from hermesx.testing.wait import wait_until

SCENARIO = pathlib.Path(__file__).with_name("netns_scenario.py")
_numbers = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10.0, check=check)


def _pids_in(namespace: str) -> list[int]:
    done = _ip("netns", "pids", namespace, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with its loopback up; its processes and itself removed after."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (scripts/bootstrap.sh installs them)")
    name = f"hxf-{os.getpid()}-{next(_numbers)}"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.skip(f"ip netns add is not permitted here: {made.stderr.strip()}")
    try:
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        # Only processes this test started live in the namespace; a scenario that
        # was killed on timeout may have left its cluster behind.
        def none_left() -> bool:
            pids = _pids_in(name)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return not pids

        wait_until(none_left, 5.0, f"the processes in namespace {name} to die", every=0.1)
        _ip("netns", "del", name, check=False)
        assert name not in _ip("netns", "list").stdout, f"namespace {name} was not removed"


def run_scenario(
    namespace: str, scenario: str, counter: pathlib.Path, home: pathlib.Path, *extra: str
) -> dict[str, Any]:
    """Run a scenario inside ``namespace``; its JSON result (``error`` set when it failed)."""
    argv = [
        "ip",
        "netns",
        "exec",
        namespace,
        sys.executable,
        str(SCENARIO),
        scenario,
        "--counter",
        str(counter),
        "--home",
        str(home),
        "--json",
        *extra,
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180.0)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"scenario {scenario} did not finish within {exc.timeout:.0f}s"}
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": f"scenario {scenario} exited {done.returncode}: {done.stderr[-2000:]}"}
    return result


def _check(result: dict[str, Any], home: pathlib.Path) -> Tally:
    if "error" in result:
        for log in sorted(home.rglob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-60:]
            print(f"\n===== {log.relative_to(home)} (last {len(lines)} lines) =====")
            print("\n".join(lines))
        print(result.get("traceback", ""))
        pytest.fail(result["error"])
    return Tally(**result["tally"])


def _host_tables() -> str:
    return subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, timeout=10.0
    ).stdout


def test_node_cut_from_zookeeper_by_nftables_fences_before_recovery(
    netns: str, atoms: dict[str, pathlib.Path], tmp_path: pathlib.Path, report: Report
) -> None:
    result = run_scenario(netns, "partition", atoms["counter"], tmp_path / "home")
    t = _check(result, tmp_path / "home")
    facts = result["facts"]
    report(t)
    assert_nothing_lost(t)
    # The kernel did the cut: the drop rule saw n1's ZooKeeper packets.
    assert facts["dropped_packets"] > 0, facts
    # The atom was recovered elsewhere from its checkpoint, with a newer age.
    assert facts["recovered_node"] in ("n2", "n3") and facts["recovered_age"] > 1, facts
    # n1 fenced: still reachable by clients, it no longer served the atom ...
    assert facts["n1_serves_after_recovery"] is False, facts
    # ... and at no probe did two copies serve; no call ran on n1 after the new copy answered.
    assert facts["probe_rounds"] > 0, facts
    assert facts["most_serving"] <= 1, facts["two_serving_rounds"]
    assert facts["old_started_before_first_new_answer"], facts
    assert facts["ran_late_on_old"] == 0, facts
    # Healed, n1 rejoins with no copy and the counter kept its value.
    assert facts["n1_after_heal_active"] == [] and facts["n1_after_heal_serving"] == [], facts
    assert facts["final_after_heal"] == facts["final"], facts
    assert "hxfault" not in _host_tables(), "the fault table leaked into the host's ruleset"


def test_packet_loss_by_nftables_completes_every_call(
    netns: str, atoms: dict[str, pathlib.Path], tmp_path: pathlib.Path, report: Report
) -> None:
    result = run_scenario(
        netns, "loss", atoms["counter"], tmp_path / "home", "--loss-percent", "10"
    )
    t = _check(result, tmp_path / "home")
    facts = result["facts"]
    report(t)
    assert_nothing_lost(t)
    # Packets really were dropped on both links while calls went on ...
    assert facts["dropped_to_node"] > 0 and facts["dropped_to_storesite"] > 0, facts
    assert facts["lossy_acked"] > 0, facts
    # ... and losing packets is slowness, not failure: every call completed.
    assert t.failed_clear == 0, t.errors_by_kind
    assert facts["lossy_failed"] == 0, facts
    assert facts["located"] == "n1@1", facts
    assert "hxfault" not in _host_tables(), "the fault table leaked into the host's ruleset"
