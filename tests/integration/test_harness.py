"""The test harness stops every process it started, also when the test run itself is killed.

A test run SIGTERM'd (a CI job cancelled, a timeout of the outer runner) or
SIGKILL'd used to leave its clusters' ZooKeeper, storesite and node processes
running; one interrupted with Ctrl-C must go on stopping them. Here child
pytest runs start clusters through the harness's fixtures and are signalled
while they hold them (the three signals' runs side by side); no process of a
run may be left once its signal landed.
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


class _HoldingRun:
    """A child pytest run of ``_HOLDING_TEST`` in its own directory, to be killed by ``sig``."""

    def __init__(self, tmp_path: pathlib.Path, sig: signal.Signals) -> None:
        self.sig = sig
        self.dir = tmp_path / sig.name.lower()
        self.dir.mkdir()
        self.pids_file = self.dir / "pids.json"
        self.base = self.dir / "base"
        self.parts: dict[str, int] = {}
        self.proc = subprocess.Popen(
            _child_pytest(self.dir, _HOLDING_TEST),
            cwd=self.dir,
            env={**_env(), "HOLDING_PIDS": str(self.pids_file)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def holding(self) -> bool:
        if self.proc.poll() is not None:
            out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
            raise AssertionError(f"the child run for {self.sig.name} ended early:\n{out[-3000:]}")
        return self.pids_file.exists()

    def kill(self) -> None:
        """Send the run its signal, once its cluster is whole and alive."""
        self.parts = json.loads(self.pids_file.read_text())
        assert {"node-n1", "node-n2", "storesite-s1", "zookeeper-server"} <= self.parts.keys()
        assert all(alive(pid) for pid in self.parts.values()), (self.sig.name, self.parts)
        self.proc.send_signal(self.sig)

    def left(self) -> list[str]:
        """What of the run still runs: its parts, and any process with its home."""
        alive_parts = [f"{part} {pid}" for part, pid in self.parts.items() if alive(pid)]
        return alive_parts + processes_with_home(self.base)

    def clean_up(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        kill_processes_with_home(self.base)
        for pid in (
            json.loads(self.pids_file.read_text()).values() if self.pids_file.exists() else ()
        ):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(240)
def test_a_killed_test_run_leaves_no_cluster_process(tmp_path: pathlib.Path) -> None:
    """Three child runs side by side, each holding a cluster: one gets SIGINT (Ctrl-C),
    one SIGTERM, one SIGKILL; no process of any of them may be left."""
    runs: list[_HoldingRun] = []
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            runs.append(_HoldingRun(tmp_path, sig))
        wait_until(lambda: all(run.holding() for run in runs), 180.0, "each run to hold a cluster")
        for run in runs:
            run.kill()
        for run in runs:
            try:
                run.proc.wait(timeout=30.0)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the run given {run.sig.name} did not end") from None
        try:
            wait_until(
                lambda: not any(run.left() for run in runs),
                30.0,
                "every process of the killed runs to stop",
            )
        except AssertionError:
            left = {run.sig.name: run.left() for run in runs if run.left()}
            raise AssertionError(f"processes of the killed runs still running: {left}") from None
    finally:
        for run in runs:
            run.clean_up()
