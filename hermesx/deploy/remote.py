"""Commands and files on a cluster host, over the system's ``ssh`` and ``scp``.

See docs/DESIGN.md §8 "A cluster over several hosts". No remote shell of our
own: :class:`Remote` runs ``ssh`` with ``BatchMode`` (a host that asks for a
password is an error, never a prompt), a connect timeout, the cluster file's
``ssh_config`` when it names one, and a shared connection per host
(``ControlMaster``) so the many short commands of a deploy pay for one
handshake. A script runs as ``sh -s`` with the script on standard input,
so nothing of it is quoted through the remote shell's command line.

Failures become :class:`ConfigurationError` or :class:`UnreachableError`
naming the host and what to fix: SSH's own failure (exit 255) says the host
does not answer SSH; a script's failure carries its last line of output.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import shlex
import subprocess
import tempfile
from collections.abc import Iterator, Sequence

from hermesx.core.errors import ConfigurationError, UnreachableError
from hermesx.deploy.clusterfile import HostPlan

__all__ = ["Remote", "RemoteResult", "control_directory", "quote"]

log = logging.getLogger(__name__)

SSH_FAILED = 255
CONNECT_TIMEOUT_S = 8


def quote(value: str) -> str:
    return shlex.quote(value)


class RemoteResult:
    """What a remote script printed, and its exit status."""

    def __init__(self, host: str, returncode: int, stdout: str, stderr: str) -> None:
        self.host = host
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def last_line(self) -> str:
        lines = [ln for ln in (self.stderr + "\n" + self.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in self.stderr.splitlines() if ln.strip()]
        return (errors or lines or ["(no output)"])[-1].strip()


class Remote:
    """One host of the cluster file, reached with ``ssh``."""

    def __init__(self, host: HostPlan, ssh_config: pathlib.Path | None, control_dir: str) -> None:
        self.host = host
        self.name = host.name
        self._options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
        self._options += ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        self._options += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/%C"]
        self._options += ["-o", "ControlPersist=60"]
        if ssh_config is not None:
            self._options = ["-F", str(ssh_config), *self._options]

    def _unreachable(self, result: RemoteResult) -> UnreachableError:
        return UnreachableError(
            f"host {self.name} ({self.host.ssh}) does not answer SSH: {result.last_line()} "
            "(check that it is up, that `ssh` reaches it with a key and no password prompt, "
            "and its ssh entry in the cluster file)"
        )

    def script(self, body: str, what: str, *, timeout: float = 300.0) -> RemoteResult:
        """Run the POSIX shell script ``body`` there; raise naming the host if it fails."""
        argv = ["ssh", *self._options, self.host.ssh, "sh", "-s"]
        try:
            done = subprocess.run(
                argv,
                input="set -eu\n" + body,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise UnreachableError(
                f"host {self.name}: {what} did not finish within {timeout:.0f} s"
            ) from exc
        result = RemoteResult(self.name, done.returncode, done.stdout, done.stderr)
        if done.returncode == SSH_FAILED and not done.stdout:
            raise self._unreachable(result)
        if done.returncode != 0:
            raise ConfigurationError(f"host {self.name}: {what} failed: {result.last_line()}")
        return result

    def copy(self, files: Sequence[pathlib.Path], directory: str, what: str) -> None:
        """Copy ``files`` into ``directory`` there (which must exist)."""
        argv = ["scp", "-q", *self._options, *map(str, files), f"{self.host.ssh}:{directory}/"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600.0)
        except subprocess.TimeoutExpired as exc:
            raise UnreachableError(f"host {self.name}: copying {what} took too long") from exc
        if done.returncode != 0:
            result = RemoteResult(self.name, done.returncode, done.stdout, done.stderr)
            if done.returncode == SSH_FAILED:
                raise self._unreachable(result)
            raise ConfigurationError(
                f"host {self.name}: copying {what} failed: {result.last_line()}"
            )

    def close(self) -> None:
        """End the shared connection."""
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                ["ssh", *self._options, "-O", "exit", self.host.ssh],
                capture_output=True,
                timeout=10.0,
            )


@contextlib.contextmanager
def control_directory() -> Iterator[str]:
    """A private directory for the shared connections' sockets (short: a socket path is)."""
    with tempfile.TemporaryDirectory(prefix="hxssh-", dir="/tmp") as directory:
        yield directory
