"""Every process a CLI verb starts is stopped when its reader goes away or it is interrupted.

``hermesx demo expense-voucher | head`` used to leave the demo's six processes
(ZooKeeper, a storesite, four nodes) running (issue 11, item 10). The demo is
run as a user would, its output read through a real pipe that the test closes
early, or the CLI is sent SIGTERM / SIGINT mid-flow; afterwards no process of
that demo may remain.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from hermesx.testing.processes import kill_processes_with_home, processes_with_home
from hermesx.testing.reaper import tethered

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["pipe-closed", "sigterm", "sigint"])
def test_the_demo_stops_its_cluster_when_its_reader_goes_away_or_it_is_interrupted(
    tmp_path: pathlib.Path, how: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMESX_")}
    env["HERMESX_HOME"] = str(home)  # the demo starts its own ZooKeeper too: six processes
    # stdout and stderr share one pipe, as in ``hermesx demo 2>&1 | head``.
    proc = tethered(
        [sys.executable, "-m", "hermesx", "demo", "expense-voucher"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen: list[bytes] = []
    try:
        # Read until the voucher flow has begun: the whole cluster is up then.
        deadline = time.monotonic() + 120.0
        while not any(b"party" in line for line in seen):
            line = proc.stdout.readline()
            assert line, f"the demo ended early: {b''.join(seen).decode(errors='replace')}"
            seen.append(line)
            assert time.monotonic() < deadline, "the demo did not start within 120 s"
        assert len(processes_with_home(home)) >= 6, processes_with_home(home)
        if how == "pipe-closed":
            proc.stdout.close()  # what ``head`` does once it has its lines
        else:
            proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
            # Keep reading so a full pipe cannot be what holds it up.
            for line in proc.stdout:
                seen.append(line)
        code = proc.wait(timeout=60.0)
        left = processes_with_home(home)
        assert left == [], f"processes of the demo still running after it exited: {left}"
        expected = 128 + signal.SIGPIPE if how == "pipe-closed" else 130
        assert code == expected, b"".join(seen[-20:]).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10.0)
        kill_processes_with_home(home)
