"""Finding the processes a test left behind, by the HERMESX_HOME they were started with.

Every part of a local cluster inherits the HERMESX_HOME of the pool or CLI
that started it, so a home of the test's own identifies its processes,
children included (ZooKeeper's JVM under its launcher), whoever their
parent is by now.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal

__all__ = ["kill_processes_with_home", "processes_with_home"]


def processes_with_home(home: pathlib.Path) -> list[str]:
    """Running processes (``pid: command``) whose HERMESX_HOME is ``home`` or inside it."""
    inside = f"HERMESX_HOME={home}".encode()
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            if not any(v == inside or v.startswith(inside + b"/") for v in environ):
                continue
            state = (proc / "stat").read_text().rsplit(") ", 1)[1][:1]
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if state != "Z":
            found.append(f"{proc.name}: {command[:160]}")
    return found


def kill_processes_with_home(home: pathlib.Path) -> None:
    """SIGKILL whatever :func:`processes_with_home` finds (a test's clean-up after a failure)."""
    for line in processes_with_home(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
