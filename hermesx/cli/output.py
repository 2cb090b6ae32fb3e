"""What the `hermesx` command prints (docs/DESIGN.md §8).

Every verb prints something a person can read, or with ``--json`` one JSON
document a program can read (:func:`emit`); progress lines go to stderr
unless ``--quiet``; a failure is one line ``error: …`` on stderr and, with
``--json``, a JSON object on stdout too (:func:`fail`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["discard_stdout", "emit", "fail", "progress", "table", "ticking"]


def emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str]) -> None:
    """Print ``data`` as JSON with ``--json``, else ``text`` (made only when it is printed)."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=None, sort_keys=True, default=str))
    else:
        print(text() if callable(text) else text)


def progress(args: argparse.Namespace) -> Callable[[str], None]:
    """A function that says how a long verb goes, on stderr, unless ``--quiet``."""

    def say(message: str) -> None:
        if not getattr(args, "quiet", False):
            # A closed stderr must not stop a verb halfway through its clean-up.
            with contextlib.suppress(OSError, ValueError):
                print(f"… {message}", file=sys.stderr, flush=True)

    return say


@contextlib.contextmanager
def ticking(say: Callable[[str], None], what: str, every: float = 1.0) -> Iterator[None]:
    """Say ``what`` with the elapsed time every ``every`` seconds until the block ends."""
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(every):
            say(f"{what} ({time.monotonic() - started:.0f} s)")

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """``rows`` under ``header`` in columns two spaces apart."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def fail(args: argparse.Namespace, exc: BaseException) -> int:
    """Report ``exc`` as one line on stderr (and JSON with ``--json``); the exit status."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if getattr(args, "json", False):
        kind = getattr(exc, "kind", "internal")
        data = {"error": message, "kind": kind, "type": type(exc).__name__}
        request_id = getattr(exc, "request_id", "")
        if request_id:
            data["request_id"] = request_id
        print(json.dumps(data))
    print(f"error: {message}", file=sys.stderr)
    return 1


def discard_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit cannot fail on a closed pipe."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
