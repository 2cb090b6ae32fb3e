"""The test harness stops every process it started, also when the test run itself is killed.

A test run SIGTERM'd (a CI job cancelled, a timeout of the outer runner) or
SIGKILL'd used to leave its clusters' ZooKeeper, storesite and node processes
running; one interrupted with Ctrl-C must go on stopping them. Here a child
pytest run starts a cluster through the harness's fixtures and is signalled
while it holds it; no process of that run may be left once the signal landed.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from hermesx.local.cluster import alive
from hermesx.testing.processes import kill_processes_with_home, processes_with_home
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration

_FAILING_TEST = textwrap.dedent(
    """
    def test_fails_with_a_cluster(cluster_factory):
        cluster = cluster_factory(["n1"], storesites=("s1",))
        assert cluster.name == "a name it does not have"
    """
)

_HOLDING_TEST = textwrap.dedent(
    """
    import json, os, pathlib, time

    def test_holds_a_cluster(cluster_factory, zk_server):
        cluster = cluster_factory(["n1", "n2"], storesites=("s1",))
        parts = {**cluster.procs, "zookeeper-server": zk_server.pid}
        done = pathlib.Path(os.environ["HOLDING_PIDS"])
        done.with_suffix(".tmp").write_text(json.dumps(parts))
        done.with_suffix(".tmp").rename(done)  # whole, or not there yet
        time.sleep(600)  # a deliberate hold: the outer test kills this run meanwhile
    """
)


def _child_pytest(tmp_path: pathlib.Path, test: str) -> list[str]:
    """The argv of a pytest run of ``test`` (written to tmp_path) with the harness's plugin."""
    (tmp_path / "test_child.py").write_text(test)
    return [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "hermesx.testing.plugin",
        "-p",
        "no:cacheprovider",
        f"--basetemp={tmp_path / 'base'}",
        f"--rootdir={tmp_path}",
        str(tmp_path / "test_child.py"),
    ]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HERMESX_")}


@pytest.mark.timeout(120)
def test_a_failed_test_reports_the_logs_of_its_clusters_processes(tmp_path: pathlib.Path) -> None:
    run = subprocess.run(
        _child_pytest(tmp_path, _FAILING_TEST),
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    for part in ("node-n1", "storesite-s1"):
        assert f"/{part}.log (last" in run.stdout, run.stdout[-3000:]
    assert "node n1 serving on" in run.stdout
    assert "ZooKeeper log (last lines)" in run.stdout
    assert not processes_with_home(tmp_path / "base")


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["sigint", "sigterm", "sigkill"]
)
def test_a_killed_test_run_leaves_no_cluster_process(tmp_path: pathlib.Path, sig: int) -> None:
    pids_file = tmp_path / "pids.json"
    base = tmp_path / "base"
    env = {**_env(), "HOLDING_PIDS": str(pids_file)}
    run = subprocess.Popen(
        _child_pytest(tmp_path, _HOLDING_TEST),
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def holding() -> bool:
            if run.poll() is not None:
                output = run.stdout.read().decode(errors="replace") if run.stdout else ""
                raise AssertionError(f"the child run ended early:\n{output[-3000:]}")
            return pids_file.exists()

        wait_until(holding, 120.0, "the child run to hold its cluster")
        parts: dict[str, int] = json.loads(pids_file.read_text())
        assert {"node-n1", "node-n2", "storesite-s1", "zookeeper-server"} <= parts.keys()
        assert all(alive(pid) for pid in parts.values()), parts
        run.send_signal(sig)
        run.wait(timeout=30.0)

        def none_left() -> bool:
            return not any(alive(pid) for pid in parts.values()) and not processes_with_home(base)

        try:
            wait_until(none_left, 30.0, "every process of the killed run to stop")
        except AssertionError:
            left = {part: pid for part, pid in parts.items() if alive(pid)}
            raise AssertionError(
                f"processes of the killed run still running: {left} {processes_with_home(base)}"
            ) from None
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=10.0)
        if run.stdout is not None:
            run.stdout.close()
        kill_processes_with_home(base)
        for pid in json.loads(pids_file.read_text()).values() if pids_file.exists() else ():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
