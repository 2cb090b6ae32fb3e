"""`hermesx deploy up|status|down|upgrade`: a cluster file's parts on its hosts (docs/DESIGN.md §8).

``up``: every host answers SSH and has the bundle's Python version (else
nothing is started); the bundle is built once and copied to the hosts that
lack its release, each unpacks it into a venv; the cluster's certificates
are made here and each host gets its own (never the CA key); then the
ZooKeeper ensemble starts and gets a quorum, the storesites start and
register, the nodes start and register — each step on all hosts at once,
each waited for with progress — and the cluster's address is printed.
``down`` stops every part any ``up`` started (nodes, then storesites, then
ZooKeeper), from the pid files on the hosts. ``status`` shows each part's
process and registration. ``upgrade`` installs the current bundle and
restarts the nodes one at a time — each drains first (SIGTERM), so no call
fails — then the storesites one at a time.

The certificates and the bundle are kept next to the cluster file, in
``.hermesx-deploy/<cluster>/``; ``tls/`` there is what clients use
(``HERMESX_TLS``).
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any, TypeVar

from hermesx.core.errors import ConfigurationError, HermesError, UnreachableError
from hermesx.deploy.bundle import Bundle, build_bundle
from hermesx.deploy.clusterfile import ClusterPlan, HostPlan, NodePlan, StoresitePlan
from hermesx.deploy.hostscripts import install_script, probe_script, start_script, status_script
from hermesx.deploy.remote import Remote, control_directory
from hermesx.rpc.security import ZK_TLS_MARKER
from nameservice.ensemble_member import ZK_SERVER_PEM

__all__ = ["Deployer", "Progress"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
T = TypeVar("T")

REGISTER_TIMEOUT_S = 120.0
QUORUM_TIMEOUT_S = 90.0
STOP_WAIT_S = 15.0
# Every this many seconds of waiting for registrations, look whether the parts still run.
EXIT_CHECK_EVERY = 4


class Deployer:
    """One cluster file's cluster; use in a ``with`` block (it holds SSH connections)."""

    def __init__(self, plan: ClusterPlan, progress: Progress | None = None) -> None:
        self.plan = plan
        self.say: Progress = progress or (lambda message: None)
        self.state = pathlib.Path(plan.source).resolve().parent / ".hermesx-deploy" / plan.cluster
        self.tls = self.state / "tls" if plan.secure else None
        self.remotes: dict[str, Remote] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Deployer:
        control = self._stack.enter_context(control_directory())
        self.remotes = {
            name: Remote(host, self.plan.ssh_config, control)
            for name, host in self.plan.hosts.items()
        }
        return self

    def __exit__(self, *exc: object) -> None:
        self.each(self.plan.hosts, lambda r: r.close(), raise_first=False)
        self._stack.close()

    # ------------------------------------------------------------ helpers

    def each(
        self,
        hosts: Iterable[str],
        action: Callable[[Remote], T],
        *,
        raise_first: bool = True,
    ) -> dict[str, T]:
        """``action`` on every host at once; the first failure (by host order) is raised."""
        names = list(hosts)
        results: dict[str, T] = {}
        errors: dict[str, HermesError] = {}
        if not names:
            return results
        with futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
            running = {name: pool.submit(action, self.remotes[name]) for name in names}
            for name, future in running.items():
                try:
                    results[name] = future.result()
                except HermesError as exc:
                    errors[name] = exc
        if errors and raise_first:
            first = next(iter(errors.values()))
            if len(errors) > 1:
                others = ", ".join(n for n in errors if errors[n] is not first)
                raise type(first)(f"{first} (and hosts {others} failed too)") from first
            raise first
        return results

    def host(self, name: str) -> HostPlan:
        return self.plan.hosts[name]

    def python(self, host: HostPlan, release: str) -> str:
        return f"{host.dir}/releases/{release}/venv/bin/python"

    def _common(self, host: HostPlan) -> list[str]:
        args = ["--zk", self.plan.zk_connect, "--cluster", self.plan.cluster]
        args += ["--session-timeout", f"{self.plan.session_timeout:g}"]
        return [*args, "--tls", f"{host.dir}/tls"] if self.tls is not None else args

    def zookeeper_argv(self, host: HostPlan, release: str) -> list[str]:
        zk = self.plan.zookeeper
        servers = ",".join(
            f"{i + 1}={self.host(h).address}:{zk.peer_port}:{zk.election_port}"
            for i, h in enumerate(zk.hosts)
        )
        number = zk.hosts.index(host.name) + 1
        argv = [
            self.python(host, release),
            *("-m", "nameservice.ensemble_member", "--dir", f"{host.dir}/zookeeper"),
            *("--id", str(number), "--address", host.address),
            *("--client-port", str(zk.client_port), "--servers", servers),
        ]
        if self.tls is not None:
            argv += ["--secure-client-port", str(zk.secure_client_port)]
            argv += ["--tls-dir", f"{host.dir}/tls"]
        return argv

    def storesite_argv(self, site: StoresitePlan, release: str) -> tuple[list[str], str]:
        host = self.host(site.host)
        data = f"{host.dir}/storesite-{site.id}"
        argv = [self.python(host, release), "-m", "hermesx", "storesite", "serve"]
        argv += ["--id", site.id, "--listen", f"{host.address}:{site.port}", "--data", data]
        return [*argv, *self._common(host)], data

    def node_argv(self, node: NodePlan, release: str) -> list[str]:
        host = self.host(node.host)
        argv = [self.python(host, release), "-m", "hermesx", "node", "serve", "--name", node.name]
        argv += [
            "--listen",
            f"{host.address}:{node.port}",
            "--data",
            f"{host.dir}/node-{node.name}",
        ]
        tags = self.plan.node_tags(node)
        if tags:
            argv += ["--tags", ",".join(tags)]
        return [*argv, *self._common(host)]

    # ------------------------------------------------------------ install

    def install(self) -> Bundle:
        """Check every host, ship the bundle where it is missing, unpack it: nothing starts."""
        self.say(f"building the bundle (project, runtime dependencies, atoms) in {self.state}")
        bundle = build_bundle(self.state / "bundle")
        self.say(
            f"bundle {bundle.release}: {bundle.size / 2**20:.0f} MiB, Python {bundle.python}; "
            f"checking {len(self.plan.hosts)} hosts over SSH"
        )
        probes = self.each(self.plan.hosts, lambda r: self._probe(r, bundle))
        self._make_certs()
        started = time.monotonic()
        self.each(self.plan.hosts, lambda r: self._install(r, bundle, probes[r.name]))
        self.say(
            f"installed release {bundle.release} on {len(self.plan.hosts)} hosts "
            f"in {time.monotonic() - started:.1f} s"
        )
        return bundle

    def _probe(self, remote: Remote, bundle: Bundle) -> bool:
        host = remote.host
        out = remote.script(
            probe_script(host.dir, host.python, bundle.release), "checking the install directory"
        ).stdout.split()
        version = out[out.index("python") + 1] if "python" in out else "?"
        if version != bundle.python:
            raise ConfigurationError(
                f"host {host.name}: {host.python} there is Python {version}, the bundle is for "
                f'Python {bundle.python}: install it there, or set python = "..." for the host'
            )
        return "have" in out

    def _make_certs(self) -> None:
        if self.tls is None:
            return
        from hermesx.rpc import roles, security

        names = {n.name: roles.NODE for n in self.plan.nodes}
        names |= {s.id: roles.STORESITE for s in self.plan.storesites}
        names[roles.CLIENT_CERT_NAME] = roles.CLIENT
        # A ZooKeeper server shows a certificate of the cluster to its clients;
        # the least of roles, as it calls no RPC (docs/DESIGN.md §10).
        names |= {f"zookeeper-{h}": roles.CLIENT for h in self.plan.zookeeper.hosts}
        certs = security.init_certs(self.tls, self.plan.cluster, names)
        (self.tls / security.ZK_TLS_MARKER).touch(mode=0o600)
        for host in self.plan.zookeeper.hosts:
            staged = self.state / "hosts" / host / ZK_SERVER_PEM
            staged.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            pem = certs.key(f"zookeeper-{host}").read_bytes()
            staged.write_bytes(pem + certs.cert(f"zookeeper-{host}").read_bytes())
            staged.chmod(0o600)

    def _tls_files(self, host: HostPlan) -> list[pathlib.Path]:
        assert self.tls is not None
        files = [self.tls / "ca.pem", self.tls / "zk.secret", self.tls / "zk-client.secret"]
        files.append(self.tls / ZK_TLS_MARKER)
        if host.name in self.plan.zookeeper.hosts:
            files.append(self.state / "hosts" / host.name / ZK_SERVER_PEM)
        for site in self.plan.storesites:
            if site.host == host.name:
                files += [self.tls / f"{site.id}.pem", self.tls / f"{site.id}.key"]
        for node in self.plan.nodes:
            if node.host == host.name:
                files += [self.tls / f"{node.name}.pem", self.tls / f"{node.name}.key"]
        return files

    def _install(self, remote: Remote, bundle: Bundle, have: bool) -> None:
        host = remote.host
        if self.tls is not None:
            remote.copy(self._tls_files(host), f"{host.dir}/tls", "the certificates")
        if not have:
            remote.copy([bundle.path], f"{host.dir}/incoming", "the bundle")
        script = install_script(host.dir, host.python, bundle.release, bundle.python)
        remote.script(script, f"installing release {bundle.release} in {host.dir}")

    # ------------------------------------------------------------ start, wait

    def start_zookeeper(self, release: str) -> None:
        zk = self.plan.zookeeper
        self.say(f"starting ZooKeeper on {', '.join(zk.hosts)}")
        self.each(
            zk.hosts,
            lambda r: r.script(
                start_script(r.host.dir, [("zookeeper", self.zookeeper_argv(r.host, release), "")]),
                "starting ZooKeeper",
            ),
        )
        from nameservice import ZooKeeperTLS
        from nameservice.ensemble_member import ensemble_serving

        deadline = time.monotonic() + QUORUM_TIMEOUT_S
        tls = None
        if self.tls is not None:
            from hermesx.rpc import roles, security

            files = security.zk_tls(self.tls, roles.CLIENT_CERT_NAME)
            tls = ZooKeeperTLS(*files) if files is not None else None
        while (why := ensemble_serving(self.plan.zk_connect, 5.0, tls)) is not None:
            if time.monotonic() > deadline:
                raise UnreachableError(
                    f"the ZooKeeper ensemble on {', '.join(zk.hosts)} did not serve: {why}: "
                    + "; ".join(
                        f"see {self.host(h).dir}/logs/zookeeper.log on {h}" for h in zk.hosts
                    )
                )
            self.say("waiting for the ZooKeeper ensemble's quorum")
        self.say(f"ZooKeeper ensemble serving at {self.plan.zk_connect}")

    def start_parts(self, parts: dict[str, list[tuple[str, list[str], str]]]) -> None:
        """Start ``parts`` (host -> (part, argv, data dir)) on their hosts at once."""
        self.each(
            parts,
            lambda r: r.script(start_script(r.host.dir, parts[r.name]), "starting parts"),
        )

    def client(self) -> Any:
        from hermesx.client import Client

        return Client(self.plan.zk_connect, self.plan.cluster, tls=self.tls, timeout=30.0)

    def wait_registered(
        self,
        kind: str,
        expected: dict[str, str],
        *,
        not_incarnation: dict[str, str] | None = None,
        timeout: float = REGISTER_TIMEOUT_S,
    ) -> dict[str, str]:
        """Wait until every ``kind`` ("nodes", "storesites") in ``expected`` (name -> address)
        is registered there (and, for names in ``not_incarnation``, as a new incarnation);
        returns their incarnations."""
        deadline = time.monotonic() + timeout
        last = ""
        client = None
        checks = 0
        try:
            while True:
                found: dict[str, Any] = {}
                try:
                    client = client or self.client()
                    client.start()
                    found = getattr(client.naming, kind)()
                except HermesError as exc:
                    # The cluster's tree appears with its first member.
                    last = str(exc)
                    if client is not None:
                        client.close()
                        client = None
                missing = [
                    name
                    for name, address in expected.items()
                    if name not in found
                    or found[name].address != address
                    or (not_incarnation or {}).get(name) == found[name].incarnation
                ]
                if not missing:
                    return {name: found[name].incarnation for name in expected}
                if time.monotonic() > deadline:
                    where = self._logs_of(kind, missing)
                    raise UnreachableError(
                        f"{kind} {', '.join(missing)} did not register within {timeout:.0f} s"
                        f"{f' ({last})' if last else ''}: {where}"
                    )
                self.say(f"waiting for {kind} {', '.join(missing)} to register")
                checks += 1
                if checks % EXIT_CHECK_EVERY == 0:
                    self._check_running(kind, missing)
                time.sleep(1.0)
        finally:
            if client is not None:
                client.close()

    def _check_running(self, kind: str, names: list[str]) -> None:
        """Fail at once, with its log's last line, when a part we wait for has exited."""
        prefix = "node" if kind == "nodes" else "storesite"
        hosts = {n.name: n.host for n in self.plan.nodes}
        hosts |= {s.id: s.host for s in self.plan.storesites}
        wanted = {hosts[name] for name in names}
        seen = self.each(
            wanted,
            lambda r: r.script(status_script(r.host.dir), "reading status").stdout,
            raise_first=False,
        )
        for name in names:
            lines = seen.get(hosts[name], "").splitlines()
            if f"{prefix}-{name} - stopped" in lines:
                raise ConfigurationError(
                    f"{prefix} {name} on host {hosts[name]} exited: {self._logs_of(kind, [name])}"
                )

    def _logs_of(self, kind: str, names: list[str]) -> str:
        prefix = "node" if kind == "nodes" else "storesite"
        hosts = {n.name: n.host for n in self.plan.nodes}
        hosts |= {s.id: s.host for s in self.plan.storesites}
        lines = []
        for name in names:
            host = self.host(hosts[name])
            path = f"{host.dir}/logs/{prefix}-{name}.log"
            tail = ""
            with contextlib.suppress(HermesError):
                tail = (
                    self.remotes[host.name]
                    .script(f"tail -n 1 '{path}' || true", "reading a log")
                    .stdout
                )
            lines.append(
                f"see {path} on host {host.name}" + (f": {tail.strip()}" if tail.strip() else "")
            )
        return "; ".join(lines)

    def up(self) -> dict[str, Any]:
        bundle = self.install()
        release = bundle.release
        self.start_zookeeper(release)
        sites: dict[str, list[tuple[str, list[str], str]]] = {}
        for site in self.plan.storesites:
            argv, data = self.storesite_argv(site, release)
            sites.setdefault(site.host, []).append((f"storesite-{site.id}", argv, data))
        self.say(f"starting storesites {', '.join(s.id for s in self.plan.storesites)}")
        self.start_parts(sites)
        self.wait_registered("storesites", self.addresses(self.plan.storesites))
        nodes: dict[str, list[tuple[str, list[str], str]]] = {}
        for node in self.plan.nodes:
            nodes.setdefault(node.host, []).append(
                (f"node-{node.name}", self.node_argv(node, release), "")
            )
        self.say(f"starting nodes {', '.join(n.name for n in self.plan.nodes)}")
        self.start_parts(nodes)
        self.wait_registered("nodes", self.addresses(self.plan.nodes))
        return self.address()

    def addresses(self, parts: Iterable[NodePlan | StoresitePlan]) -> dict[str, str]:
        found = {}
        for part in parts:
            name = part.name if isinstance(part, NodePlan) else part.id
            found[name] = f"{self.host(part.host).address}:{part.port}"
        return found

    def address(self) -> dict[str, Any]:
        return {
            "cluster": self.plan.cluster,
            "zk": self.plan.zk_connect,
            "tls": str(self.tls) if self.tls is not None else None,
            "nodes": [n.name for n in self.plan.nodes],
            "storesites": [s.id for s in self.plan.storesites],
        }
