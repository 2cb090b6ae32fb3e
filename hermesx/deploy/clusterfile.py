"""The cluster file (``cluster.toml``): which hosts run which parts (docs/DESIGN.md §8).

:func:`load_cluster_file` reads it into a :class:`ClusterPlan` and refuses,
with one line naming the file, the entry and what to fix, anything it cannot
deploy: an unknown key, a missing or mistyped value, two hosts of one name,
a part on a host the file does not list, two storesites with one id, two
parts on one host and port, a ZooKeeper ensemble of 2 (or of any even size).

```toml
cluster = "prod"                 # the cluster's name
secure = true                    # mutual TLS, roles, name-service secret (default)
ssh_config = "ssh_config"        # optional: passed to ssh -F (relative to this file)
session_timeout = 4.0            # optional: the parts' name-service sessions, seconds

[[host]]
name = "h1"                      # used in this file and in messages
ssh = "root@10.0.0.11"           # what `ssh` is given to reach it
address = "10.0.0.11"            # optional: what peers dial (default: ssh's host part)
dir = "/opt/hermesx"             # its install directory (absolute)
tags = ["eu"]                    # optional: every node on it carries them
python = "python3"               # optional: the interpreter the venv is made with

[zookeeper]
hosts = ["h1", "h2", "h3"]       # 1, 3 or 5 servers: an ensemble
client_port = 2181               # optional, also peer_port 2888, election_port 3888,
                                 # secure_client_port 2281 (TLS, used when secure)

[[storesite]]
id = "s1"
host = "h1"
port = 7100                      # optional

[[node]]
name = "n1"
host = "h1"
tags = ["gpu"]                   # optional, added to the host's
port = 7000                      # optional
```
"""

from __future__ import annotations

import pathlib
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hermesx.core.errors import ConfigurationError
from hermesx.core.identity import validate_name

__all__ = [
    "ClusterPlan",
    "HostPlan",
    "NodePlan",
    "StoresitePlan",
    "ZooKeeperPlan",
    "load_cluster_file",
    "parse_cluster",
]

T = TypeVar("T")

_TOP = (
    "cluster",
    "secure",
    "ssh_config",
    "session_timeout",
    "host",
    "zookeeper",
    "storesite",
    "node",
)
_HOST = ("name", "ssh", "address", "dir", "tags", "python")
_ZOOKEEPER = ("hosts", "client_port", "peer_port", "election_port", "secure_client_port")
_STORESITE = ("id", "host", "port")
_NODE = ("name", "host", "tags", "port")


@dataclass(frozen=True, slots=True)
class HostPlan:
    name: str
    ssh: str
    address: str
    dir: str
    tags: tuple[str, ...] = ()
    python: str = "python3"


@dataclass(frozen=True, slots=True)
class ZooKeeperPlan:
    hosts: tuple[str, ...]
    client_port: int = 2181
    peer_port: int = 2888
    election_port: int = 3888
    # A secure cluster's clients use this TLS port; the plain one listens on loopback only.
    secure_client_port: int = 2281


@dataclass(frozen=True, slots=True)
class StoresitePlan:
    id: str
    host: str
    port: int = 7100


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str
    host: str
    tags: tuple[str, ...] = ()
    port: int = 7000


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """A whole cluster file, checked."""

    source: str
    cluster: str
    hosts: Mapping[str, HostPlan]
    zookeeper: ZooKeeperPlan
    storesites: tuple[StoresitePlan, ...]
    nodes: tuple[NodePlan, ...]
    secure: bool = True
    ssh_config: pathlib.Path | None = None
    session_timeout: float = 4.0

    @property
    def zk_connect(self) -> str:
        """The ensemble's connect string: every server's address and (TLS when secure) port."""
        zk = self.zookeeper
        port = zk.secure_client_port if self.secure else zk.client_port
        return ",".join(f"{self.hosts[h].address}:{port}" for h in self.zookeeper.hosts)

    def node_tags(self, node: NodePlan) -> tuple[str, ...]:
        """The host's tags, then the node's own."""
        return tuple(dict.fromkeys((*self.hosts[node.host].tags, *node.tags)))

    def parts_on(self, host: str) -> list[str]:
        """The parts on ``host``: ``zookeeper``, ``storesite-<id>``, ``node-<name>``."""
        parts = ["zookeeper"] if host in self.zookeeper.hosts else []
        parts += [f"storesite-{s.id}" for s in self.storesites if s.host == host]
        parts += [f"node-{n.name}" for n in self.nodes if n.host == host]
        return parts


def load_cluster_file(path: pathlib.Path) -> ClusterPlan:
    """Read and check the cluster file at ``path``."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read cluster file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{path}: not UTF-8 text (byte {exc.start}): a cluster file is TOML"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from exc
    return parse_cluster(data, str(path), base=path.parent)


class _Reader:
    """Typed reads of one table of the file, with errors naming where they are."""

    def __init__(self, source: str, where: str, table: Any, keys: Sequence[str]) -> None:
        self.where = f"{source}: {where}" if where else source
        if not isinstance(table, dict):
            raise ConfigurationError(f"{self.where}: must be a table, not {_kind(table)}")
        unknown = sorted(set(table) - set(keys))
        if unknown:
            raise ConfigurationError(
                f"{self.where}: unknown key {unknown[0]!r} (known keys: {', '.join(keys)})"
            )
        self.table = table

    def get(self, key: str, kind: type[T], default: T | None = None) -> T:
        if key not in self.table:
            if default is None:
                raise ConfigurationError(f"{self.where}: missing key {key!r}")
            return default
        value = self.table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigurationError(
                f"{self.where}: {key} must be {kind.__name__}, not {_kind(value)}"
            )
        if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
            # Written into remote commands, paths and service files: a newline or
            # a NUL there would break them far from this file.
            raise ConfigurationError(f"{self.where}: {key} {value!r} holds a control character")
        return value

    def names(self, key: str, what: str) -> tuple[str, ...]:
        values = self.get(key, list, [])
        for value in values:
            if not isinstance(value, str):
                raise ConfigurationError(f"{self.where}: {key} must be a list of strings")
            self.check(validate_name, value, what)
        return tuple(values)

    def port(self, key: str, default: int) -> int:
        port = self.get(key, int, default)
        if not 1 <= port <= 65535:
            raise ConfigurationError(f"{self.where}: {key} {port} is not a port (1 to 65535)")
        return port

    def name(self, key: str, what: str) -> str:
        return self.check(validate_name, self.get(key, str), what)

    def check(self, check: Any, value: str, what: str) -> str:
        try:
            check(value, what)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{self.where}: {exc}") from exc
        except Exception as exc:  # validate_name raises the identity layer's errors
            raise ConfigurationError(f"{self.where}: {exc}") from exc
        return value


def _kind(value: object) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "true/false"}.get(
        type(value), type(value).__name__
    )


def parse_cluster(data: Mapping[str, Any], source: str, base: pathlib.Path) -> ClusterPlan:
    """Check a parsed cluster file (``source`` names it in errors)."""
    top = _Reader(source, "", dict(data), _TOP)
    cluster = top.name("cluster", "cluster name")
    hosts = _hosts(source, top.get("host", list))
    zookeeper = _zookeeper(source, top.get("zookeeper", dict), hosts)
    storesites = _storesites(source, top.get("storesite", list), hosts)
    nodes = _nodes(source, top.get("node", list), hosts)
    _ports_free(source, hosts, zookeeper, storesites, nodes)
    ssh_config = top.get("ssh_config", str, "")
    timeout = top.get("session_timeout", float, 4.0)
    if not 1.0 <= timeout <= 60.0:
        raise ConfigurationError(f"{source}: session_timeout {timeout} is not 1 to 60 seconds")
    return ClusterPlan(
        source=source,
        cluster=cluster,
        hosts=hosts,
        zookeeper=zookeeper,
        storesites=storesites,
        nodes=nodes,
        secure=top.get("secure", bool, True),
        ssh_config=(base / ssh_config) if ssh_config else None,
        session_timeout=timeout,
    )


def _hosts(source: str, tables: list[Any]) -> dict[str, HostPlan]:
    hosts: dict[str, HostPlan] = {}
    if not tables:
        raise ConfigurationError(f"{source}: no [[host]]: list the machines to deploy on")
    for i, table in enumerate(tables):
        label = table.get("name", f"#{i + 1}") if isinstance(table, dict) else f"#{i + 1}"
        r = _Reader(source, f"host {label}", table, _HOST)
        name = r.name("name", "host name")
        if name in hosts:
            raise ConfigurationError(f"{source}: host {name} is listed twice: rename one")
        ssh = r.get("ssh", str)
        if not ssh.strip() or ssh.startswith("-"):
            raise ConfigurationError(f"{r.where}: ssh {ssh!r} is not an SSH destination")
        address = r.get("address", str, ssh.rpartition("@")[2])
        if not address or any(c.isspace() for c in address):
            raise ConfigurationError(
                f"{r.where}: address {address!r} is not a host address (set address, or "
                "ssh as [user@]host)"
            )
        directory = r.get("dir", str)
        if not directory.startswith("/") or "'" in directory:
            raise ConfigurationError(
                f"{r.where}: dir {directory!r} must be an absolute path (without quotes)"
            )
        hosts[name] = HostPlan(
            name,
            ssh,
            address,
            directory.rstrip("/") or "/",
            r.names("tags", "tag"),
            _python(r),
        )
    return hosts


def _python(r: _Reader) -> str:
    python = r.get("python", str, "python3")
    if not python.strip():
        raise ConfigurationError(f"{r.where}: python is empty: name the host's Python")
    return python


def _on_host(r: _Reader, hosts: Mapping[str, HostPlan]) -> str:
    host = r.get("host", str)
    if host not in hosts:
        raise ConfigurationError(
            f"{r.where}: host {host!r} is not a [[host]] of this file (hosts: {', '.join(hosts)})"
        )
    return host


def _zookeeper(source: str, table: Any, hosts: Mapping[str, HostPlan]) -> ZooKeeperPlan:
    r = _Reader(source, "[zookeeper]", table, _ZOOKEEPER)
    servers = r.get("hosts", list)
    for host in servers:
        if not isinstance(host, str):
            raise ConfigurationError(f"{r.where}: hosts must be a list of host names")
        if host not in hosts:
            raise ConfigurationError(
                f"{r.where}: host {host!r} is not a [[host]] of this file "
                f"(hosts: {', '.join(hosts)})"
            )
    if len(set(servers)) != len(servers):
        raise ConfigurationError(f"{r.where}: a host is listed twice in hosts")
    if len(servers) % 2 == 0:
        raise ConfigurationError(
            f"{r.where}: an ensemble of {len(servers)} servers stops when one of them is "
            "lost (a quorum is a majority): list 1, 3 or 5 hosts"
        )
    return ZooKeeperPlan(
        tuple(servers),
        r.port("client_port", 2181),
        r.port("peer_port", 2888),
        r.port("election_port", 3888),
        r.port("secure_client_port", 2281),
    )


def _entries(
    source: str,
    tables: list[Any],
    hosts: Mapping[str, HostPlan],
    what: str,
    key: str,
    keys: Sequence[str],
    needed: str,
) -> Iterator[tuple[_Reader, str, str]]:
    """Each ``[[what]]`` table: its reader, its ``key`` (id or name) and its host."""
    if not tables:
        raise ConfigurationError(f"{source}: no [[{what}]]: {needed}")
    for i, table in enumerate(tables):
        label = table.get(key, f"#{i + 1}") if isinstance(table, dict) else f"#{i + 1}"
        r = _Reader(source, f"{what} {label}", table, keys)
        yield r, r.name(key, f"{what} {key}"), _on_host(r, hosts)


def _storesites(
    source: str, tables: list[Any], hosts: Mapping[str, HostPlan]
) -> tuple[StoresitePlan, ...]:
    found: dict[str, StoresitePlan] = {}
    for r, sid, host in _entries(
        source, tables, hosts, "storesite", "id", _STORESITE, "atoms need a home"
    ):
        if sid in found:
            raise ConfigurationError(
                f"{source}: two storesites have id {sid} (on {found[sid].host} and {host}): "
                "every storesite needs an id of its own"
            )
        found[sid] = StoresitePlan(sid, host, r.port("port", 7100))
    return tuple(found.values())


def _nodes(source: str, tables: list[Any], hosts: Mapping[str, HostPlan]) -> tuple[NodePlan, ...]:
    found: dict[str, NodePlan] = {}
    for r, name, host in _entries(
        source, tables, hosts, "node", "name", _NODE, "atoms need nodes to run on"
    ):
        if name in found:
            raise ConfigurationError(f"{source}: two nodes are named {name}: rename one")
        found[name] = NodePlan(name, host, r.names("tags", "tag"), r.port("port", 7000))
    return tuple(found.values())


def _ports_free(
    source: str,
    hosts: Mapping[str, HostPlan],
    zookeeper: ZooKeeperPlan,
    storesites: Sequence[StoresitePlan],
    nodes: Sequence[NodePlan],
) -> None:
    """No two parts of one host on one port."""
    taken: dict[tuple[str, int], str] = {}
    wanted: list[tuple[str, int, str]] = []
    for host in zookeeper.hosts:
        ports = (zookeeper.client_port, zookeeper.peer_port, zookeeper.election_port)
        for port in (*ports, zookeeper.secure_client_port):
            wanted.append((host, port, "zookeeper"))
    wanted += [(s.host, s.port, f"storesite {s.id}") for s in storesites]
    wanted += [(n.host, n.port, f"node {n.name}") for n in nodes]
    for host, port, part in wanted:
        address = hosts[host].address
        other = taken.get((address, port))
        if other is not None:
            raise ConfigurationError(
                f"{source}: {part} and {other} both want port {port} on host {host}: "
                "give one another port"
            )
        taken[(address, port)] = part
