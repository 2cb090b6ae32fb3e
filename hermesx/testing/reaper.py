"""Cluster processes that die with the test run that started them, however it ends.

A local cluster's parts run in sessions of their own (so ``hermesx up``
daemons outlive the CLI), which also means nothing stops them when a test
run is interrupted, SIGTERM'd or SIGKILL'd before its fixtures tear down.
The harness therefore starts one small watchdog process per test process
(this module run as a script) and tells it, over a pipe, the
process group of every part it starts and stops. When the pipe reaches
end-of-file the test process is gone, by whatever means, and the watchdog
sends SIGTERM to every group still registered (SIGKILL after a grace).

Why not the alternatives: ``PR_SET_PDEATHSIG`` fires when the *thread* that
forked the child exits, and fault tests restart nodes from worker threads
(the nodes would die with the thread); it also needs a ``preexec_fn``, which
is unsafe in a process running gRPC and kazoo threads. An ``atexit`` or
signal handler does not run on SIGKILL, nor when the interpreter is wedged.
The kernel closes a dead process's pipe in every case.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["Reaper", "reaper", "tethered"]

log = logging.getLogger(__name__)

# Time the parts get to stop on SIGTERM before SIGKILL (`hermesx down` waits as long).
GRACE = 10.0


class Reaper:
    """The test process's end of the pipe to its watchdog."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            # Run as a script: it needs only the standard library, not hermesx.
            [sys.executable, "-I", __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            # A session of its own: a Ctrl-C at the terminal must not stop the
            # watchdog before it has stopped the parts.
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def started(self, pid: int) -> None:
        """Stop process group ``pid`` if this process dies before :meth:`stopped`."""
        self._send(f"+{pid}\n")

    def stopped(self, pid: int) -> None:
        self._send(f"-{pid}\n")

    def _send(self, line: str) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        with self._lock:
            try:
                stdin.write(line.encode())
                stdin.flush()
            except (BrokenPipeError, ValueError):
                log.warning(
                    "the reaper (pid %s) is gone: %s not registered", self.pid, line.strip()
                )


_reaper: Reaper | None = None
_reaper_lock = threading.Lock()


def reaper() -> Reaper:
    """This process's watchdog, started on first use."""
    global _reaper
    with _reaper_lock:
        if _reaper is None:
            _reaper = Reaper()
        return _reaper


def tethered(argv: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` in a process group of its own that is stopped if this process dies.

    For the processes a test starts by hand (a storesite, a server, a parent
    to kill); cluster parts are registered by their :class:`LocalCluster`.
    """
    process = subprocess.Popen(argv, start_new_session=True, **options)
    reaper().started(process.pid)
    return process


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _signal_groups(groups: dict[int, str | None], sig: int) -> None:
    for pgid, started in groups.items():
        # A group id is not reused while the group has members; only its leader's
        # pid may have been, by an unrelated process that now leads a group of its own.
        leader = _start_time(pgid)
        if leader is not None and leader != started:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _watch() -> None:
    """Read registrations until end-of-file, then stop every group still registered."""
    # The terminal's signals are for the test run; this process has one job left.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    groups: dict[int, str | None] = {}
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if line[:1] == b"+":
            pgid = int(line[1:])
            groups[pgid] = _start_time(pgid)
        elif line[:1] == b"-":
            groups.pop(int(line[1:]), None)
    _signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while groups and time.monotonic() < deadline:
        groups = {g: t for g, t in groups.items() if _group_exists(g)}
        # Polling: the parts are not this process's children, so it cannot wait on them.
        time.sleep(0.1)
    _signal_groups(groups, signal.SIGKILL)


if __name__ == "__main__":
    _watch()
