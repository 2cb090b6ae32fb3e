"""Configuration: where the cluster is, from flags, environment or the local cluster.

See docs/DESIGN.md §8.

A cluster's address is one ZooKeeper connect string plus a cluster name.
Flags win over ``HERMESX_ZK`` / ``HERMESX_CLUSTER``; without either, the
local cluster started by ``hermesx up`` (its state lives under
``$HERMESX_HOME``, default ``~/.hermesx``) is used. Unknown ``HERMESX_*``
variables are rejected so a typo does not silently fall back to defaults.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass

from hermesx.core.errors import ConfigurationError

__all__ = [
    "DEFAULT_CLUSTER",
    "KNOWN_ENV",
    "ClusterAddress",
    "check_environment",
    "cluster_dir",
    "hermesx_home",
    "resolve_cluster",
    "resolve_tls",
]

DEFAULT_CLUSTER = "local"
KNOWN_ENV = frozenset(
    {"HERMESX_ZK", "HERMESX_CLUSTER", "HERMESX_HOME", "HERMESX_LOG", "HERMESX_TLS", "HERMESX_CALLS"}
)


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    zk: str
    cluster: str
    # The cluster's certificate directory (mutual TLS, name-service secret);
    # None for a cluster that runs without them.
    tls: pathlib.Path | None = None


def check_environment() -> None:
    unknown = sorted(k for k in os.environ if k.startswith("HERMESX_") and k not in KNOWN_ENV)
    if unknown:
        raise ConfigurationError(
            f"unknown environment variable {unknown[0]} (known: {', '.join(sorted(KNOWN_ENV))})"
        )


def hermesx_home() -> pathlib.Path:
    return pathlib.Path(os.environ.get("HERMESX_HOME") or pathlib.Path.home() / ".hermesx")


def cluster_dir(cluster: str) -> pathlib.Path:
    return hermesx_home() / "clusters" / cluster


def resolve_tls(cluster: str, tls: str | pathlib.Path | None = None) -> pathlib.Path | None:
    """The certificate directory: flag, then HERMESX_TLS, then the local cluster's."""
    chosen = tls or os.environ.get("HERMESX_TLS")
    if chosen:
        path = pathlib.Path(chosen)
        if not (path / "ca.pem").exists():
            raise ConfigurationError(f"{path} holds no cluster certificates (no ca.pem)")
        return path
    local = cluster_dir(cluster) / "tls"
    return local if (local / "ca.pem").exists() else None


def resolve_cluster(
    zk: str | None = None, cluster: str | None = None, tls: str | pathlib.Path | None = None
) -> ClusterAddress:
    name = cluster or os.environ.get("HERMESX_CLUSTER") or DEFAULT_CLUSTER
    connect = zk or os.environ.get("HERMESX_ZK")
    if not connect:
        state = cluster_dir(name) / "cluster.json"
        try:
            connect = str(json.loads(state.read_text())["zk"])
        except FileNotFoundError:
            raise ConfigurationError(
                f"no cluster address: pass --zk, set HERMESX_ZK, or start a local cluster "
                f"{name!r} with `hermesx up`"
            ) from None
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(f"local cluster state {state} is unreadable: {exc}") from exc
    return ClusterAddress(connect, name, resolve_tls(name, tls))
