"""The `hermesx` command run in the test's own process, by its entry point :func:`hermesx.cli.main`.

For tests about what a verb says rather than about its process (docs/DESIGN.md
§8: exit status, one ``error: …`` line, ``--json``): the same arguments,
environment and captured output as ``python -m hermesx`` (hermesx/testing/cli.py's
``run_hermesx``), without a new interpreter's start. Signals and exit at
interpreter shutdown still need the process. It lives beside the tests since
the harness (hermesx/testing) sits below the command line in the package's layers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
from collections.abc import Iterator

from hermesx.cli import main

__all__ = ["run_hermesx_here"]


def run_hermesx_here(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """``hermesx ARGV`` run by :func:`hermesx.cli.main` in this process, as ``run_hermesx`` does.

    The exit status is what ``python -m hermesx`` would exit with (``main``'s
    return, or argparse's ``SystemExit``); stdout and stderr are captured;
    the environment, the signal handlers and the logging set-up that
    ``main`` changes are put back afterwards.
    """
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
