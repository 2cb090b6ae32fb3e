"""Hosts for tests across machines: network namespaces on a bridge, each with its own sshd.

See docs/DESIGN.md §8 "A cluster over several hosts". :class:`HostNetwork`
makes, on this machine, what ``hermesx deploy`` meets on real ones:

* a *hub* namespace holding a bridge, and one namespace per host joined to
  it by a veth pair, with an address the harness assigns in ``10.77.0.0/24``
  (only inside these namespaces: the machine's own namespace gets no
  interface, address or route, so nothing is routed anywhere outside);
* in every host namespace an ``sshd`` (Debian's ``openssh-server``) on the
  host's address only, with a host key made here and one authorized key,
  the harness's own; an ``ssh_config`` naming each host, with that key and
  the hosts' keys pinned (``StrictHostKeyChecking yes``);
* a directory of its own per host, for its install directory (namespaces
  share the file system: each host must keep to its own directory);
* a *control* namespace on the same bridge, without sshd, where the
  deployer and the test's clients run (``run``, ``exec_argv``).

:meth:`HostNetwork.cut` drops every packet of a host with nftables inside its
namespace and :meth:`HostNetwork.heal` removes the rule. :meth:`HostNetwork.close`
kills every process in the namespaces and removes them, also when the test
is interrupted; a run killed outright leaves namespaces named after its pid,
which the next :class:`HostNetwork` removes once that pid is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from hermesx.core.errors import ConfigurationError
from hermesx.testing.wait import wait_until

__all__ = ["HostNetwork", "TestHost", "host_network_missing"]

log = logging.getLogger(__name__)

SUBNET = "10.77.0"
CONTROL_ADDRESS = f"{SUBNET}.2"
_FIRST_HOST = 11
_PREFIX = "hxh"
_NAME = re.compile(rf"^{_PREFIX}(\d+)-")
_SSHD = "/usr/sbin/sshd"
_CUT_TABLE = "hxcut"


@dataclass(frozen=True, slots=True)
class TestHost:
    """One host: its name (an SSH alias in :attr:`HostNetwork.ssh_config`), namespace, address."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    name: str
    namespace: str
    address: str
    directory: pathlib.Path


def host_network_missing() -> str | None:
    """Why hosts cannot be made here (not root, a tool missing), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [t for t in ("ip", "nft", "ssh", "ssh-keygen") if shutil.which(t) is None]
    if not pathlib.Path(_SSHD).exists():
        missing.append("sshd")
    if missing:
        return f"{', '.join(missing)} not installed (scripts/bootstrap.sh installs them)"
    return None


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 20.0) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise ConfigurationError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()]


def _remove_namespace(namespace: str) -> None:
    """Kill every process in ``namespace``, then delete it."""

    def none_left() -> bool:
        pids = [int(p) for p in _run(["ip", "netns", "pids", namespace], check=False).split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not pids

    wait_until(none_left, 10.0, f"the processes in namespace {namespace} to die", every=0.1)
    _run(["ip", "netns", "del", namespace], check=False)


def _remove_stale() -> None:
    """Namespaces a killed run of this harness left (its pid is gone)."""
    for namespace in _namespaces():
        found = _NAME.match(namespace)
        if found is None or int(found.group(1)) == os.getpid():
            continue
        if not pathlib.Path(f"/proc/{found.group(1)}").exists():
            log.info("removing namespace %s left by an earlier run", namespace)
            _remove_namespace(namespace)


class HostNetwork:
    """``count`` hosts (``h1``…) and a control namespace on one bridge; a context manager."""

    def __init__(self, count: int, base: pathlib.Path) -> None:
        if not 1 <= count <= 200:
            raise ConfigurationError(f"a host network has 1 to 200 hosts, not {count}")
        self.base = pathlib.Path(base)
        tag = f"{_PREFIX}{os.getpid()}-{os.urandom(2).hex()}"
        self.hub = f"{tag}-hub"
        self.control = f"{tag}-ctl"
        self.hosts = [
            TestHost(
                f"h{i + 1}",
                f"{tag}-h{i + 1}",
                f"{SUBNET}.{_FIRST_HOST + i}",
                self.base / f"h{i + 1}",
            )
            for i in range(count)
        ]
        self.ssh_dir = self.base / "ssh"
        self.ssh_config = self.ssh_dir / "config"
        self._made: list[str] = []
        self._sshd: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> HostNetwork:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str) -> TestHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    # ------------------------------------------------------------ making it

    def start(self) -> None:
        _remove_stale()
        self.base.mkdir(parents=True, exist_ok=True)
        self.ssh_dir.mkdir(mode=0o700, exist_ok=True)
        self._namespace(self.hub)
        _run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        self._join(self.control, CONTROL_ADDRESS, "vctl")
        for i, host in enumerate(self.hosts):
            self._join(host.namespace, host.address, f"v{i + 1}")
            host.directory.mkdir(parents=True, exist_ok=True)
        self._make_keys()
        for host in self.hosts:
            self._start_sshd(host)
        for host in self.hosts:
            wait_until(
                lambda h=host: self._answers(h),  # type: ignore[misc]
                20.0,
                f"sshd of {host.name} at {host.address} to answer",
                every=0.1,
            )

    def _namespace(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._made.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _join(self, namespace: str, address: str, hub_end: str) -> None:
        """A namespace with ``address`` on eth0, its peer on the hub's bridge."""
        self._namespace(namespace)
        veth = ["ip", "link", "add", "eth0", "netns", namespace, "type", "veth"]
        _run([*veth, "peer", "name", hub_end, "netns", self.hub])
        _run(["ip", "-n", self.hub, "link", "set", hub_end, "master", "br0", "up"])
        _run(["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0"])
        _run(["ip", "-n", namespace, "link", "set", "eth0", "up"])

    def _make_keys(self) -> None:
        key = self.ssh_dir / "id_ed25519"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hermesx-test", "-f", str(key)])
        known = []
        for host in self.hosts:
            host_key = self.ssh_dir / f"{host.name}_host_ed25519_key"
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
            public = host_key.with_suffix(".pub").read_text().split()[:2]
            known.append(f"{host.address} {' '.join(public)}")
        (self.ssh_dir / "known_hosts").write_text("\n".join(known) + "\n")
        authorized = self.ssh_dir / "authorized_keys"
        authorized.write_text(key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        lines = []
        for host in self.hosts:
            lines += [f"Host {host.name}", f"  HostName {host.address}"]
        lines += [
            "Host *",
            "  User root",
            f"  IdentityFile {key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {self.ssh_dir / 'known_hosts'}",
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
            "  LogLevel ERROR",
        ]
        self.ssh_config.write_text("\n".join(lines) + "\n")

    def _start_sshd(self, host: TestHost) -> None:
        # sshd refuses to start without its privilege separation directory.
        pathlib.Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        config = self.ssh_dir / f"{host.name}_sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {host.address}",
                    "Port 22",
                    f"HostKey {self.ssh_dir / f'{host.name}_host_ed25519_key'}",
                    f"AuthorizedKeysFile {self.ssh_dir / 'authorized_keys'}",
                    f"PidFile {self.ssh_dir / f'{host.name}_sshd.pid'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    # The test's temporary directories are not root's home.
                    "StrictModes no",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    "Subsystem sftp internal-sftp",
                    "LogLevel ERROR",
                ]
            )
            + "\n"
        )
        log_file = (self.ssh_dir / f"{host.name}_sshd.log").open("ab")
        with log_file:
            self._sshd.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", host.namespace, _SSHD, "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def _answers(self, host: TestHost) -> bool:
        done = subprocess.run(
            [*self.exec_argv(), "ssh", "-F", str(self.ssh_config), host.name, "true"],
            capture_output=True,
            timeout=20.0,
        )
        return done.returncode == 0

    # ------------------------------------------------------------ using it

    def exec_argv(self, namespace: str | None = None) -> list[str]:
        """The prefix that runs a command in ``namespace`` (default: the control namespace)."""
        return ["ip", "netns", "exec", namespace or self.control]

    def run(
        self, argv: Sequence[str], *, timeout: float = 120.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the control namespace; its output captured."""
        return subprocess.run(
            [*self.exec_argv(), *argv], capture_output=True, text=True, timeout=timeout, env=env
        )

    def cut_rules(self, host: TestHost) -> pathlib.Path:
        """The nftables rules (a file for ``nft -f``) that cut ``host`` off but its loopback."""
        rules = (
            f"table inet {_CUT_TABLE} {{\n"
            "  chain input { type filter hook input priority -10; policy drop; iif lo accept; }\n"
            "  chain output { type filter hook output priority -10; policy drop; oif lo accept; }\n"
            "}\n"
        )
        rules_file = self.base / f"{host.name}-cut.nft"
        rules_file.write_text(rules)
        return rules_file

    def cut(self, host: TestHost) -> None:
        """Drop every packet in and out of ``host`` but its loopback (nftables in its namespace)."""
        _run([*self.exec_argv(host.namespace), "nft", "-f", str(self.cut_rules(host))])

    def heal(self, host: TestHost) -> None:
        _run([*self.exec_argv(host.namespace), "nft", "delete", "table", "inet", _CUT_TABLE])

    # ------------------------------------------------------------ removing it

    def close(self) -> None:
        """Kill every process in the namespaces and remove them (idempotent)."""
        for sshd in self._sshd:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sshd.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                sshd.wait(timeout=5.0)
        self._sshd.clear()
        for namespace in reversed(self._made):
            _remove_namespace(namespace)
        self._made.clear()
        left = [n for n in _namespaces() if n.startswith(self.hub.removesuffix("-hub"))]
        if left:
            raise AssertionError(f"namespaces not removed: {left}")
