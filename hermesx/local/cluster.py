"""A local cluster of real processes: ZooKeeper, storesites, nodes.

See docs/DESIGN.md §8 `up` / `down`.

``hermesx up`` starts each part as a background process in its own session
(so it outlives the command), waits until every part has registered in the
name service, and writes where they run to ``$HERMESX_HOME/clusters/NAME``.
``hermesx down`` stops them all. Tests and the demo use the same class, so
they run the very processes a user runs; the test harness also gives a
cluster a :class:`PartWatcher`, told of every part started and stopped, so
that a test run's parts stop with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hermesx.core.config import cluster_dir
from hermesx.core.errors import ConfigurationError, UnreachableError
from hermesx.core.files import PRIVATE_UMASK, open_private, private_dir, write_private
from hermesx.core.identity import validate_name
from hermesx.routing.naming import Naming
from hermesx.rpc import roles
from hermesx.rpc.roles import CLIENT_CERT_NAME, GATEWAY_CERT_NAME, TEST_CERT_NAME

__all__ = ["LocalCluster", "NodeSpec", "PartWatcher", "alive", "private_cluster"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    tags: tuple[str, ...] = ()
    # HOST:PORT to listen on; port 0 picks a free one at each start.
    listen: str = "127.0.0.1:0"
    # More `hermesx node serve` flags (e.g. a test's small worker pool); not kept by `down`.
    options: tuple[str, ...] = ()


class PartWatcher(Protocol):
    """Told of every part a cluster starts and stops (the test harness ties them to its run)."""

    def started(self, pid: int) -> None: ...

    def stopped(self, pid: int) -> None: ...


@dataclass
class LocalCluster:
    name: str = "local"
    session_timeout: float = 4.0
    test_hooks: bool = False
    # Mutual TLS between every process and a name-service secret (the default).
    secure: bool = True
    procs: dict[str, int] = field(default_factory=dict)  # part -> pid
    zk: str = ""
    node_specs: dict[str, NodeSpec] = field(default_factory=dict)
    storesite_ids: list[str] = field(default_factory=list)
    # Part -> address of its Prometheus endpoint, as registered (after wait_registered).
    metrics: dict[str, str] = field(default_factory=dict)
    # The HTTP gateway's URL once started (docs/DESIGN.md §13).
    gateway_url: str = ""
    # None for `hermesx up`: its parts outlive the command that started them.
    watcher: PartWatcher | None = field(default=None, repr=False, compare=False)

    @property
    def dir(self) -> pathlib.Path:
        return cluster_dir(self.name)

    @property
    def state_file(self) -> pathlib.Path:
        return self.dir / "cluster.json"

    # ------------------------------------------------------------ state

    @classmethod
    def load(cls, name: str) -> LocalCluster:
        state = cluster_dir(name) / "cluster.json"
        try:
            data = json.loads(state.read_text())
        except FileNotFoundError:
            raise ConfigurationError(f"no local cluster {name!r} is running (no {state})") from None
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"local cluster state {state} is unreadable: {exc}") from exc
        return cls(
            name=name,
            session_timeout=float(data.get("session_timeout", 4.0)),
            test_hooks=bool(data.get("test_hooks", False)),
            secure=bool(data.get("secure", False)),
            procs={k: int(v) for k, v in data.get("pids", {}).items()},
            zk=str(data["zk"]),
            node_specs={
                n["name"]: NodeSpec(n["name"], tuple(n.get("tags", ()))) for n in data["nodes"]
            },
            storesite_ids=list(data.get("storesites", [])),
            gateway_url=str(data.get("gateway", "")),
        )

    def save(self) -> None:
        private_dir(self.dir)
        data: dict[str, Any] = {
            "cluster": self.name,
            "zk": self.zk,
            "session_timeout": self.session_timeout,
            "test_hooks": self.test_hooks,
            "secure": self.secure,
            "pids": self.procs,
            "nodes": [{"name": s.name, "tags": list(s.tags)} for s in self.node_specs.values()],
            "storesites": self.storesite_ids,
            "gateway": self.gateway_url,
        }
        tmp = self.state_file.with_suffix(".tmp")
        write_private(tmp, json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    # ------------------------------------------------------------ up / down

    def up(
        self,
        nodes: Sequence[NodeSpec],
        *,
        storesites: Sequence[str] = ("s1",),
        zk: str | None = None,
        progress: Progress | None = None,
        timeout: float = 60.0,
        init_stores: bool = False,
        gateway: str | None = None,
    ) -> None:
        """Start the cluster's parts; a storesite new to it makes a new store.

        ``init_stores`` lets every storesite make a new store in place of a
        missing or damaged one (``hermesx up --init-stores``); ``gateway``
        (HOST:PORT) starts the HTTP gateway there too.
        """
        say = progress or (lambda _msg: None)
        validate_name(self.name, "cluster name")
        if self.state_file.exists():
            running = LocalCluster.load(self.name)
            if any(alive(pid) for pid in running.procs.values()):
                raise ConfigurationError(
                    f"local cluster {self.name!r} is already running (hermesx down first)"
                )
        private_dir(self.dir)
        if self.secure:
            from hermesx.rpc import security

            say("making the cluster's certificates")
            wanted = {spec.name: roles.NODE for spec in nodes}
            wanted.update(dict.fromkeys(storesites, roles.STORESITE))
            wanted[CLIENT_CERT_NAME] = roles.CLIENT
            wanted[GATEWAY_CERT_NAME] = roles.GATEWAY
            if self.test_hooks:
                # Only a cluster with test hooks has a certificate that may call them.
                wanted[TEST_CERT_NAME] = roles.TEST
            security.init_certs(self.tls_dir, self.name, wanted)
        try:
            if zk is None:
                say("starting ZooKeeper")
                self.zk = self._start_zookeeper(timeout)
            else:
                self.zk = zk
            self.save()
            for sid in storesites:
                say(f"starting storesite {sid}")
                # Only a storesite this cluster never had gets a new store: on
                # an existing cluster's data a missing or damaged store is an
                # error to report, not a reason to start empty.
                self.start_storesite(sid, init=init_stores or not self._store_made(sid).exists())
            for spec in nodes:
                say(f"starting node {spec.name}")
                self.start_node(spec)
            self.wait_registered(timeout, say)
            for sid in storesites:
                write_private(self._store_made(sid), "")
            if gateway is not None:
                say("starting the gateway")
                self.start_gateway(gateway, timeout=timeout)
        except BaseException:
            self.down()
            raise

    def _store_made(self, sid: str) -> pathlib.Path:
        """Marks that storesite ``sid`` of this cluster has made its store."""
        return self.dir / f"storesite-{sid}.made"

    def _spawn(self, part: str, argv: list[str]) -> int:
        log_path = self.dir / f"{part}.log"
        with open_private(log_path) as log_file:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Whatever a part or its libraries create is the user's alone.
                umask=PRIVATE_UMASK,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if self.watcher is not None:
            self.watcher.started(proc.pid)
            old = self.procs.get(part)
            if old is not None and not alive(old):
                self.watcher.stopped(old)
        self.procs[part] = proc.pid
        self.save()
        return proc.pid

    def _start_zookeeper(self, timeout: float) -> str:
        zk_dir = self.dir / "zookeeper"
        connect_file = zk_dir / "connect"
        connect_file.unlink(missing_ok=True)
        private_dir(zk_dir)
        pid = self._spawn(
            "zookeeper", [sys.executable, "-m", "hermesx.local.cluster", "zookeeper", str(zk_dir)]
        )
        return _await_file(connect_file, pid, timeout, "ZooKeeper", self.dir / "zookeeper.log")

    @property
    def tls_dir(self) -> pathlib.Path:
        return self.dir / "tls"

    def _common_args(self) -> list[str]:
        args = ["--zk", self.zk, "--cluster", self.name]
        if self.secure:
            args += ["--tls", str(self.tls_dir)]
        return args

    def start_storesite(
        self, sid: str, *, init: bool = False, listen: str = "127.0.0.1:0", advertise: str = ""
    ) -> int:
        """Start storesite ``sid`` on its data; ``init`` lets it create a new store;
        ``advertise`` is the address peers dial, if not ``listen`` (a test's proxy)."""
        self._ensure_cert(sid, roles.STORESITE)
        if sid not in self.storesite_ids:
            self.storesite_ids.append(sid)
        argv = [
            sys.executable,
            "-m",
            "hermesx",
            "storesite",
            "serve",
            "--id",
            sid,
            "--listen",
            listen,
            "--data",
            str(self.dir / f"storesite-{sid}"),
            "--session-timeout",
            str(self.session_timeout),
            *self._common_args(),
        ]
        if init:
            argv.append("--init")
        if advertise:
            argv += ["--advertise", advertise]
        return self._spawn(f"storesite-{sid}", argv)

    def _ensure_cert(self, name: str, role: str) -> None:
        if self.secure:
            from hermesx.rpc import security

            security.issue_cert(self.tls_dir, self.name, name, role)

    def start_node(self, spec: NodeSpec) -> int:
        self._ensure_cert(spec.name, roles.NODE)
        self.node_specs[spec.name] = spec
        argv = [
            sys.executable,
            "-m",
            "hermesx",
            "node",
            "serve",
            "--name",
            spec.name,
            "--listen",
            spec.listen,
            "--data",
            str(self.dir / f"node-{spec.name}"),
            "--session-timeout",
            str(self.session_timeout),
            *self._common_args(),
        ]
        if spec.tags:
            argv += ["--tags", ",".join(spec.tags)]
        if self.test_hooks:
            argv.append("--test-hooks")
        argv += spec.options
        return self._spawn(f"node-{spec.name}", argv)

    def start_gateway(
        self,
        listen: str = "127.0.0.1:0",
        options: Sequence[str] = (),
        timeout: float = 60.0,
        part: str = "gateway",
    ) -> str:
        """Start an HTTP gateway on ``listen`` (port 0: a free one); returns its URL."""
        self._ensure_cert(GATEWAY_CERT_NAME, roles.GATEWAY)
        url_file = self.dir / f"{part}.url"
        url_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "hermesx", "gateway", "--listen", listen]
        argv += ["--data", str(self.dir / part), "--url-file", str(url_file)]
        pid = self._spawn(part, [*argv, *self._common_args(), *options])
        url = _await_file(url_file, pid, timeout, f"the {part}", self.dir / f"{part}.log")
        if part == "gateway":
            self.gateway_url = url
            self.save()
        return url

    def wait_registered(
        self,
        timeout: float = 60.0,
        progress: Progress | None = None,
        nodes: Sequence[str] | None = None,
    ) -> None:
        want_nodes = set(nodes if nodes is not None else self.node_specs)
        want_sites = set(self.storesite_ids) if nodes is None else set()
        naming = Naming(self.zk, self.name, tls=self.tls_dir if self.secure else None)
        naming.start()
        try:
            deadline = time.monotonic() + timeout
            while True:
                live_nodes, live_sites = _live(naming, self.procs)
                missing = sorted(want_nodes - live_nodes) + sorted(want_sites - live_sites)
                if not missing:
                    self.metrics.update(_metrics_of(naming))
                    if progress:
                        progress("all parts registered")
                    return
                for part in missing:
                    key = f"node-{part}" if part in want_nodes else f"storesite-{part}"
                    pid = self.procs.get(key)
                    if pid is not None and not alive(pid):
                        raise UnreachableError(
                            f"{key} exited during start-up; see {self.dir / (key + '.log')}: "
                            f"{_last_line(self.dir / (key + '.log'))}"
                        )
                if time.monotonic() > deadline:
                    raise UnreachableError(
                        f"not registered within {timeout:.0f}s: {', '.join(missing)}"
                    )
                time.sleep(0.1)
        finally:
            naming.close()

    def kill(self, part: str, sig: int = signal.SIGKILL) -> None:
        pid = self.procs.get(part)
        if pid is None:
            raise ConfigurationError(f"cluster {self.name!r} has no part {part!r}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _reap(pid, 5.0):
            self._forget(pid)

    def _forget(self, pid: int) -> None:
        if self.watcher is not None:
            self.watcher.stopped(pid)

    def down(self, progress: Progress | None = None, timeout: float = 10.0) -> list[str]:
        """Stop every part (nodes first, ZooKeeper last); returns what was stopped.

        A second Ctrl-C (or SIGTERM) while stopping waits until every part is
        stopped, so an impatient user does not leave half a cluster behind.
        """
        with _signals_deferred():
            return self._down(progress, timeout)

    def _down(self, progress: Progress | None, timeout: float) -> list[str]:
        def say(message: str) -> None:
            if progress is not None:
                with contextlib.suppress(OSError, ValueError):
                    progress(message)

        order = sorted(self.procs, key=lambda p: (p == "zookeeper", p.startswith("storesite"), p))
        stopped: list[str] = []
        for part in order:
            pid = self.procs[part]
            if alive(pid):
                say(f"stopping {part}")
                # The whole cluster stops: a node's drain (its SIGTERM) has nowhere to go.
                sig = signal.SIGINT if part.startswith("node-") else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                stopped.append(part)
        deadline = time.monotonic() + timeout
        for part in order:
            pid = self.procs[part]
            if not _reap(pid, max(deadline - time.monotonic(), 0.1)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _reap(pid, 2.0)
            if not alive(pid):
                self._forget(pid)
        self.procs.clear()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        return stopped


def _live(naming: Naming, procs: Mapping[str, int]) -> tuple[set[str], set[str]]:
    """The nodes and storesites registered by the processes we started (a killed
    predecessor's registration lingers until its session expires)."""
    nodes = {n for n, m in naming.nodes().items() if m.data.get("pid") == procs.get(f"node-{n}")}
    sites = {
        s
        for s, m in naming.storesites().items()
        if m.data.get("pid") == procs.get(f"storesite-{s}")
    }
    return nodes, sites


def _metrics_of(naming: Naming) -> dict[str, str]:
    """Part -> its metrics endpoint, as the parts registered them."""
    found: dict[str, str] = {}
    for kind, members in (("node", naming.nodes()), ("storesite", naming.storesites())):
        for name, member in members.items():
            if member.data.get("metrics"):
                found[f"{kind}-{name}"] = str(member.data["metrics"])
    return found


@contextlib.contextmanager
def private_cluster(
    prefix: str,
    nodes: Sequence[NodeSpec],
    *,
    progress: Progress | None = None,
    session_timeout: float = 4.0,
    test_hooks: bool = False,
) -> Iterator[LocalCluster]:
    """A throwaway local cluster in a HERMESX_HOME of its own, always stopped and removed."""
    with tempfile.TemporaryDirectory(prefix="hermesx-") as home:
        old_home = os.environ.get("HERMESX_HOME")
        os.environ["HERMESX_HOME"] = home
        cluster = LocalCluster(
            f"{prefix}{os.getpid()}", session_timeout=session_timeout, test_hooks=test_hooks
        )
        try:
            if progress is not None:
                progress(f"starting a local cluster of {len(nodes)} nodes")
            cluster.up(nodes, progress=progress)
            yield cluster
        finally:
            cluster.down()
            if old_home is None:
                os.environ.pop("HERMESX_HOME", None)
            else:
                os.environ["HERMESX_HOME"] = old_home


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def alive(pid: int) -> bool:
    """Is process ``pid`` running (not exited, not a zombie)? Reaps it when it is our child."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name in parentheses may itself hold ") ".
            return f.read().rsplit(") ", 1)[1][:1] != "Z"
    except FileNotFoundError:
        return False  # it exited between the two looks
    except (OSError, IndexError):
        return True


def _reap(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _await_file(path: pathlib.Path, pid: int, timeout: float, what: str, log: pathlib.Path) -> str:
    """The text a starting part writes to ``path`` once it serves; fails when it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text().strip()
        if not alive(pid):
            raise UnreachableError(f"{what} did not start; see {log}: {_last_line(log)}")
        time.sleep(0.05)
    raise UnreachableError(f"{what} did not start within {timeout:.0f}s")


def _last_line(path: pathlib.Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _serve_zookeeper(zk_dir: pathlib.Path) -> None:
    """Run a ZooKeeper server until SIGTERM; write its connect string when ready."""
    from nameservice import ZooKeeperServer

    os.umask(PRIVATE_UMASK)
    server = ZooKeeperServer(data_dir=zk_dir / "data")
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    server.start()
    try:
        write_private(zk_dir / "connect", server.connect_string)
        while not stop:
            time.sleep(0.2)
    finally:
        server.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "zookeeper":
        try:
            _serve_zookeeper(pathlib.Path(sys.argv[2]))
        except Exception as exc:  # the launcher's own errors are not HermesErrors
            sys.exit(f"error: {exc}")
    else:
        sys.exit("usage: python -m hermesx.local.cluster zookeeper DIR")
