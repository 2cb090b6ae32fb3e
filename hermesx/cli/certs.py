"""`hermesx certs init`: a cluster's CA and the certificates of its processes, by role."""

from __future__ import annotations

import argparse
import os
import pathlib

from hermesx.cli.output import emit
from hermesx.cli.parser import Verbs
from hermesx.core.errors import ConfigurationError

__all__ = ["register"]


def cmd_certs_init(args: argparse.Namespace) -> None:
    from hermesx.core.config import DEFAULT_CLUSTER, cluster_dir
    from hermesx.rpc import roles, security

    cluster = args.cluster or os.environ.get("HERMESX_CLUSTER") or DEFAULT_CLUSTER
    directory = pathlib.Path(args.dir) if args.dir else cluster_dir(cluster) / "tls"
    wanted: dict[str, str] = {}

    def add(name: str, role: str) -> None:
        if wanted.get(name, role) != role:
            raise ConfigurationError(f"{name!r} is given two roles: {wanted[name]} and {role}")
        wanted[name] = role

    for flag, role in [
        (args.nodes, roles.NODE),
        (args.storesites, roles.STORESITE),
        (args.gateways, roles.GATEWAY),
        (args.clients, roles.CLIENT),
    ]:
        for name in (n for n in (flag or "").split(",") if n):
            add(name, role)
    for entry in (n for n in (args.names or "").split(",") if n):
        role, sep, name = entry.partition(":")
        if not sep:
            raise ConfigurationError(
                f"--names entry {entry!r} has no role: write ROLE:NAME "
                f"(roles: {', '.join(roles.ROLES)}) or use --nodes/--storesites/--gateways"
            )
        add(name, roles.validate_role(role))
    add(roles.CLIENT_CERT_NAME, roles.CLIENT)
    certs = security.init_certs(directory, cluster, wanted)
    made = certs.names()
    emit(
        args,
        {"cluster": cluster, "dir": str(directory), "names": made, "roles": wanted},
        f"cluster {cluster!r}: CA and certificates for "
        f"{', '.join(f'{n} ({wanted.get(n, security.cert_role(directory, n))})' for n in made)} "
        f"in {directory}\n"
        f"give each process its own NAME.pem/NAME.key, ca.pem and zk.secret "
        f"(clients: zk-client.secret instead of zk.secret); keep ca.key safe",
    )


def register(certs: Verbs) -> None:
    p = certs.add("init", cmd_certs_init, "make a cluster CA and certificates for its processes")
    p.add_argument("--dir", help="where (default: the local cluster's tls directory)")
    p.add_argument("--nodes", help="node names to certify (role node), comma-separated")
    p.add_argument("--storesites", help="storesite ids to certify (role storesite)")
    p.add_argument("--gateways", help="gateway names to certify (role gateway)")
    p.add_argument("--clients", help="more client certificates (role client) beside 'client'")
    p.add_argument("--names", help="ROLE:NAME entries, comma-separated (e.g. node:n1,storesite:s1)")
