"""Launch real ZooKeeper servers for local clusters and tests (docs/DESIGN.md §7, §8).

``hermesx up`` and the test suite run ZooKeeper from Debian's ``zookeeper``
package as a child JVM: one standalone server (:class:`ZooKeeperServer`) or a
loopback ensemble (:class:`ZooKeeperEnsemble`). Each server gets a generated
``zoo.cfg`` that binds the client port to 127.0.0.1 only, turns the admin HTTP
server off and whitelists the four-letter words we poll. Readiness is judged
by ``srvr`` (``ruok`` answers before the server takes sessions).

The JVM writes its log to ``zookeeper.log`` in its directory; a failed start
raises :class:`ZooKeeperError` with the log's last lines. A server must not
outlive the process that started it: it runs in its own process group, is
stopped at interpreter exit, and (when started from the main thread) gets
SIGKILL from the kernel if its parent dies.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

from nameservice.errors import ZooKeeperError

_DIR_MODE, _FILE_MODE = 0o700, 0o600


def _private_dir(path: pathlib.Path) -> None:
    """Make ``path`` with mode 0700 (tightened if it exists); missing parents are made too."""
    path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    path.chmod(_DIR_MODE)


def _write_private(path: pathlib.Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), _FILE_MODE)
        handle.write(text)


__all__ = [
    "ZooKeeperEnsemble",
    "ZooKeeperServer",
    "find_zookeeper",
    "four_letter",
    "free_port",
    "open_shared_root",
]

log = logging.getLogger(__name__)

_JAVA_DIR = pathlib.Path("/usr/share/java")
_CLASSPATH_ENV = "HERMESX_ZOOKEEPER_CLASSPATH"
_JVM_FLAGS = (
    "-Xms16m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.net.preferIPv4Stack=true",
    "-Dzookeeper.admin.enableServer=false",
)
_STANDALONE_MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"
_QUORUM_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
_PR_SET_PDEATHSIG = 1
_NETTY_EXTRA = ("netty-codec.jar", "netty-resolver.jar", "netty-transport-native-unix-common.jar")
_LOG_TAIL_LINES = 30


def find_zookeeper() -> tuple[str, ...]:
    """Classpath parts for the local ZooKeeper install (Debian's ``zookeeper``).

    ``HERMESX_ZOOKEEPER_CLASSPATH`` (``:``-separated) overrides the search.
    """
    override = os.environ.get(_CLASSPATH_ENV)
    if override:
        return tuple(part for part in override.split(os.pathsep) if part)
    if shutil.which("java") is None:
        raise ZooKeeperError("java is not installed: apt-get install zookeeper (pulls in Java)")
    jar = _JAVA_DIR / "zookeeper.jar"
    if not jar.exists():
        raise ZooKeeperError(
            f"ZooKeeper is not installed ({jar} missing): apt-get install zookeeper"
        )
    parts = [str(jar)]
    # The server logs through slf4j; without a binding it logs nothing at all.
    for binding in ("slf4j-simple.jar", "slf4j-log4j12.jar", "slf4j-nop.jar"):
        if (_JAVA_DIR / binding).exists():
            parts.append(str(_JAVA_DIR / binding))
            break
    # The secure client port's Netty needs these, which Debian's jar does not list.
    for extra in _NETTY_EXTRA:
        if (_JAVA_DIR / extra).exists():
            parts.append(str(_JAVA_DIR / extra))
    return tuple(parts)


def open_shared_root(connect_string: str, root: str = "/hermesx") -> None:
    """Make ``root`` open to every client, as the operator of a ZooKeeper shared by
    clusters with different secrets does (otherwise the first cluster with a
    secret owns it and the others need roots of their own)."""
    from kazoo.client import KazooClient
    from kazoo.security import OPEN_ACL_UNSAFE

    opener = KazooClient(hosts=connect_string, timeout=10.0)
    opener.start(timeout=15.0)
    try:
        opener.ensure_path(root, acl=OPEN_ACL_UNSAFE)
    finally:
        opener.stop()
        opener.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def four_letter(port: int, word: str, timeout: float = 1.0, host: str = "127.0.0.1") -> str:
    """Send a four-letter word to host:port and return the answer ('' on failure)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        return ""
    return b"".join(chunks).decode(errors="replace")


def _serving(port: int, host: str = "127.0.0.1") -> bool:
    answer = four_letter(port, "srvr", host=host)
    return "Zookeeper version" in answer and "not currently serving" not in answer


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel sends SIGKILL when
    # the thread that forked us exits, so only used from the main thread.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _ServerProcess:
    """One ZooKeeper JVM with its own directory, config and log."""

    def __init__(
        self,
        directory: pathlib.Path,
        config: str,
        main_class: str,
        client_port: int,
        *,
        die_with_parent: bool,
        heap_mb: int = 128,
    ) -> None:
        self.directory = directory
        self.config = config
        self.main_class = main_class
        self.client_port = client_port
        self.die_with_parent = die_with_parent
        self.heap_mb = heap_mb
        self.process: subprocess.Popen[bytes] | None = None
        # Where the client port listens (an ensemble member on a host: its address).
        self.client_address = "127.0.0.1"

    @property
    def log_path(self) -> pathlib.Path:
        return self.directory / "zookeeper.log"

    def launch(self) -> None:
        _private_dir(self.directory)
        _private_dir(self.directory / "data")
        config_path = self.directory / "zoo.cfg"
        _write_private(config_path, self.config)
        command = [
            "java",
            *_JVM_FLAGS,
            f"-Xmx{self.heap_mb}m",
            "-cp",
            os.pathsep.join(find_zookeeper()),
            self.main_class,
            str(config_path),
        ]
        pdeathsig = self.die_with_parent and threading.current_thread() is threading.main_thread()
        preexec: Callable[[], None] | None = _die_with_parent if pdeathsig else None
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, _FILE_MODE)
        os.fchmod(log_fd, _FILE_MODE)
        with os.fdopen(log_fd, "ab") as log_file:
            try:
                self.process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=self.directory,
                    start_new_session=True,
                    preexec_fn=preexec,
                    # Snapshots and transaction logs hold every name of the
                    # cluster: the server's files are its user's alone.
                    umask=0o077,
                )
            except OSError as exc:
                raise ZooKeeperError(
                    f"cannot start ZooKeeper on port {self.client_port}: {exc}"
                ) from exc
        log.info(
            "ZooKeeper starting on %s:%s (pid %s)", self.client_address, self.client_port, self.pid
        )

    @property
    def pid(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, why: str) -> ZooKeeperError:
        return ZooKeeperError(
            f"ZooKeeper on port {self.client_port} {why}; last lines of {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def signal_group(self, sig: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, grace: float = 5.0) -> None:
        if self.process is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait(timeout=grace)
        self.process = None

    def kill(self) -> None:
        if self.process is None:
            return
        self.signal_group(signal.SIGKILL)
        self.process.wait(timeout=10.0)
        self.process = None


def _base_config(
    directory: pathlib.Path, client_port: int, tick_ms: int, address: str = "127.0.0.1"
) -> list[str]:
    return [
        f"tickTime={tick_ms}",
        f"dataDir={directory / 'data'}",
        f"clientPort={client_port}",
        f"clientPortAddress={address}",
        "admin.enableServer=false",
        "4lw.commands.whitelist=ruok,srvr,mntr,stat",
        "maxClientCnxns=0",
        # Short sessions (1-10 s with tickTime=500) let tests see expiry fast.
        "minSessionTimeout=1000",
        "maxSessionTimeout=60000",
    ]


def _wait_serving(servers: Sequence[_ServerProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(servers)
    while pending:
        for server in list(pending):
            if server.exited():
                raise server.fail("exited during start")
            if _serving(server.client_port, server.client_address):
                pending.remove(server)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise pending[0].fail(f"did not serve within {timeout:.0f}s")
        time.sleep(0.1)


class ZooKeeperServer:
    """A standalone ZooKeeper on 127.0.0.1, run as a child process."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: pathlib.Path | None = None,
        tick_ms: int = 500,
        die_with_parent: bool = True,
        heap_mb: int = 128,
    ) -> None:
        self._port = port if port is not None else free_port()
        self._own_dir = data_dir is None
        directory = (
            pathlib.Path(tempfile.mkdtemp(prefix="hermesx-zk-"))
            if data_dir is None
            else pathlib.Path(data_dir)
        )
        _private_dir(directory)
        config = "\n".join(_base_config(directory, self._port, tick_ms)) + "\n"
        # 128 MiB holds ~100,000 znodes; large benchmarks need more.
        self._server = _ServerProcess(
            directory,
            config,
            _STANDALONE_MAIN,
            self._port,
            die_with_parent=die_with_parent,
            heap_mb=heap_mb,
        )
        self._die_with_parent = die_with_parent

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers ``srvr``."""
        self._server.launch()
        if self._die_with_parent:
            atexit.register(self.stop)
        try:
            _wait_serving([self._server], timeout)
        except ZooKeeperError:
            self._server.kill()
            raise
        log.info("ZooKeeper serving at %s", self.connect_string)

    def stop(self) -> None:
        """Terminate the server (SIGKILL if it lingers) and remove a data dir it made."""
        atexit.unregister(self.stop)
        self._server.stop()
        if self._own_dir:
            shutil.rmtree(self._server.directory, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server (fault tests); its data dir stays for a restart."""
        self._server.kill()

    @property
    def connect_string(self) -> str:
        return f"127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._server.pid

    @property
    def data_dir(self) -> pathlib.Path:
        return self._server.directory

    @property
    def log_path(self) -> pathlib.Path:
        return self._server.log_path

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return self._server.log_tail(lines)

    def __enter__(self) -> ZooKeeperServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ZooKeeperEnsemble:
    """``size`` ZooKeeper servers forming one quorum on loopback ports."""

    def __init__(self, size: int = 3, *, base_dir: pathlib.Path | None = None) -> None:
        if size < 1:
            raise ValueError(f"ensemble size must be at least 1, not {size}")
        self._own_dir = base_dir is None
        self._base = (
            pathlib.Path(tempfile.mkdtemp(prefix="hermesx-zk-ensemble-"))
            if base_dir is None
            else pathlib.Path(base_dir)
        )
        ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
        peers = [
            f"server.{i + 1}=127.0.0.1:{peer}:{election}"
            for i, (_, peer, election) in enumerate(ports)
        ]
        self._servers: list[_ServerProcess] = []
        for i, (client, _, _) in enumerate(ports):
            directory = self._base / f"zk{i + 1}"
            _private_dir(directory)
            _private_dir(directory / "data")
            _write_private(directory / "data" / "myid", f"{i + 1}\n")
            config = [*_base_config(directory, client, 500), "initLimit=10", "syncLimit=5", *peers]
            self._servers.append(
                _ServerProcess(
                    directory, "\n".join(config) + "\n", _QUORUM_MAIN, client, die_with_parent=True
                )
            )

    def start(self, timeout: float = 60.0) -> None:
        """Start every server and wait until each serves (a quorum has formed)."""
        atexit.register(self.stop)
        for server in self._servers:
            server.launch()
        try:
            _wait_serving(self._servers, timeout)
        except ZooKeeperError:
            for server in self._servers:
                server.kill()
            raise
        log.info("ZooKeeper ensemble serving at %s", self.connect_string)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        for server in self._servers:
            server.stop()
        if self._own_dir:
            shutil.rmtree(self._base, ignore_errors=True)

    def kill(self, index: int) -> None:
        """SIGKILL server ``index`` (0-based)."""
        self._servers[index].kill()

    def restart(self, index: int, timeout: float = 60.0) -> None:
        """Start server ``index`` again (after kill) and wait until it serves."""
        server = self._servers[index]
        server.kill()
        server.launch()
        _wait_serving([server], timeout)

    def pid(self, index: int) -> int | None:
        return self._servers[index].pid

    @property
    def connect_string(self) -> str:
        return ",".join(f"127.0.0.1:{server.client_port}" for server in self._servers)

    def log_tail(self, index: int, lines: int = _LOG_TAIL_LINES) -> str:
        return self._servers[index].log_tail(lines)

    def __enter__(self) -> ZooKeeperEnsemble:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
