"""Running the `hermesx` command in tests: as a process (as a user would) or in this process.

:func:`run_hermesx` starts ``python -m hermesx``; :func:`run_hermesx_here`
calls the command's entry point, :func:`hermesx.cli.main`, in the test's own
process with the same environment, arguments and captured output, for tests
about what a verb says rather than about the process (docs/DESIGN.md §8:
exit status, one ``error: …`` line, ``--json``). It saves no start-up time
when a test needs the process itself (signals, exit at interpreter shutdown).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

from hermesx.local.cluster import LocalCluster

__all__ = ["cluster_env", "run_hermesx", "run_hermesx_here"]


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


def run_hermesx_here(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """``hermesx ARGV`` run by :func:`hermesx.cli.main` in this process, as :func:`run_hermesx`.

    The exit status is what ``python -m hermesx`` would exit with (``main``'s
    return, or argparse's ``SystemExit``); stdout and stderr are captured;
    the environment, the signal handlers and the logging set-up that
    ``main`` changes are put back afterwards.
    """
    from hermesx.cli import main

    out, err = io.StringIO(), io.StringIO()
    with (
        _environment(env),
        _signal_handlers(signal.SIGTERM, signal.SIGHUP),
        _root_logging(),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1 if exc.code else 0
    return subprocess.CompletedProcess(
        ["hermesx", *argv], code, stdout=out.getvalue(), stderr=err.getvalue()
    )


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _signal_handlers(*signums: signal.Signals) -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _root_logging() -> Iterator[None]:
    # With no handler on the root logger, ``main``'s ``basicConfig`` logs to
    # the captured stderr, as the command's own process would.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
