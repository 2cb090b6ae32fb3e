"""Local clusters for tests: started on a given ZooKeeper, tied to the test run, always stopped.

Every integration and fault test starts its clusters through
:class:`ClusterPool`: each cluster gets a name of its own (its own root in
ZooKeeper), the pool's HERMESX_HOME (its certificates, logs and stores),
test hooks and the ``tester`` certificate, and its processes are registered
with this run's :mod:`reaper <hermesx.testing.reaper>` so none outlives the
run. The pytest plugin (:mod:`hermesx.testing.plugin`) opens the pools and
attaches the log tails of a failed test's clusters to its report.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import signal
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.testing.reaper import reaper
from hermesx.testing.wait import wait_until

__all__ = ["ClusterPool", "open_pool", "open_pools", "part_log", "wait_for_log"]

_numbers = itertools.count(1)
_open: list[ClusterPool] = []

# Lines of each process's log attached to a failed test's report.
LOG_LINES = 60


class ClusterPool:
    """Starts local clusters in one HERMESX_HOME; :meth:`stop_all` stops every one."""

    def __init__(self, prefix: str, home: pathlib.Path, *, session_timeout: float = 4.0) -> None:
        self.prefix = prefix
        self.home = home
        self.session_timeout = session_timeout
        self.clusters: list[LocalCluster] = []

    def start(
        self,
        nodes: int | Sequence[str | NodeSpec] = 3,
        *,
        zk: str,
        storesites: Sequence[str] = ("s1",),
        session_timeout: float | None = None,
        test_hooks: bool = True,
        node_zk: Mapping[str, str] | None = None,
    ) -> LocalCluster:
        """Start a cluster and wait until every part registered.

        ``nodes``: a count (n1, n2, ...) or names / specs. ``node_zk`` gives a
        node its own ZooKeeper connect string (e.g. a proxy the test can cut);
        the other parts use ``zk``.
        """
        names = [f"n{i + 1}" for i in range(nodes)] if isinstance(nodes, int) else nodes
        specs = [n if isinstance(n, NodeSpec) else NodeSpec(n) for n in names]
        cluster = LocalCluster(
            f"{self.prefix}{os.getpid()}x{next(_numbers)}",
            session_timeout=self.session_timeout if session_timeout is None else session_timeout,
            test_hooks=test_hooks,
            watcher=reaper(),
        )
        self.clusters.append(cluster)
        special = dict(node_zk or {})
        cluster.up([s for s in specs if s.name not in special], storesites=storesites, zk=zk)
        for spec in specs:
            if spec.name not in special:
                continue
            # LocalCluster hands every process its own zk string; swap it for this node only.
            cluster.zk = special[spec.name]
            try:
                cluster.start_node(spec)
            finally:
                cluster.zk = zk
                cluster.save()
        if special:
            cluster.wait_registered(nodes=[s.name for s in specs])
        return cluster

    def stop_all(self) -> None:
        """Stop every cluster of the pool, at once: their tests are over.

        Each part gets SIGKILL, not the clean stop of ``hermesx down`` (about a
        second per cluster): nothing is asserted of a stop here, and the tests
        of a clean stop stop their clusters themselves.
        """
        for cluster in self.clusters:
            for pid in cluster.procs.values():
                _kill_child_group(pid)
            cluster.down()

    def log_tails(self, lines: int = LOG_LINES) -> Iterator[tuple[str, str]]:
        """(title, last lines) of every process log of every cluster of this pool."""
        for cluster in self.clusters:
            # The pool's home, not HERMESX_HOME: another pool may have set that since.
            for path in sorted((self.home / "clusters" / cluster.name).glob("*.log")):
                try:
                    tail = path.read_text(errors="replace").splitlines()[-lines:]
                except OSError as exc:
                    tail = [f"(unreadable: {exc})"]
                yield f"{cluster.name}/{path.name} (last {len(tail)} lines)", "\n".join(tail)


def _kill_child_group(pid: int) -> None:
    """SIGKILL the process group of ``pid`` if it is a running child of this process.

    A part is the leader of its own session and group (LocalCluster starts it
    so). A pid that is no child of ours, or already reaped, may be another
    program's by now: it is left to ``LocalCluster.down``.
    """
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return
    if done == 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@contextmanager
def open_pool(
    prefix: str, home: pathlib.Path, *, session_timeout: float = 4.0
) -> Iterator[ClusterPool]:
    """A pool whose clusters live in ``home`` (set as HERMESX_HOME meanwhile); all stopped after."""
    old_home = os.environ.get("HERMESX_HOME")
    os.environ["HERMESX_HOME"] = str(home)
    pool = ClusterPool(prefix, home, session_timeout=session_timeout)
    _open.append(pool)
    try:
        yield pool
    finally:
        try:
            pool.stop_all()
        finally:
            _open.remove(pool)
            if old_home is None:
                os.environ.pop("HERMESX_HOME", None)
            else:
                os.environ["HERMESX_HOME"] = old_home


def open_pools() -> list[ClusterPool]:
    """The pools open now: their clusters are the ones a failing test may have used."""
    return list(_open)


def part_log(cluster: LocalCluster, part: str) -> str:
    """The whole log of one of ``cluster``'s processes (``node-n1``, ``storesite-s1``, ...)."""
    try:
        return (cluster.dir / f"{part}.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_log(cluster: LocalCluster, part: str, text: str, timeout: float = 30.0) -> str:
    """Wait until ``part``'s log holds ``text``; returns the log."""

    def logged() -> str | None:
        log = part_log(cluster, part)
        return log if text in log else None

    log = wait_until(logged, timeout, f"{part} to log {text!r}")
    assert log is not None
    return log
