"""Running the `hermesx` command in tests as a user would: ``python -m hermesx`` in a process."""

from __future__ import annotations

import os
import subprocess
import sys

from hermesx.local.cluster import LocalCluster

__all__ = ["cluster_env", "run_hermesx"]


def cluster_env(cluster: LocalCluster, **more: str) -> dict[str, str]:
    """This process's environment, pointed at ``cluster`` (plus ``more``)."""
    return {**os.environ, "HERMESX_ZK": cluster.zk, "HERMESX_CLUSTER": cluster.name, **more}


def run_hermesx(
    env: dict[str, str], *argv: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``hermesx ARGV`` to its end, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "hermesx", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
