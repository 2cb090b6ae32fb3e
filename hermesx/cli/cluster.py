"""Verbs of a cluster as a whole: `hermesx up` and `down` (a local cluster), `hermesx nodes`."""

from __future__ import annotations

import argparse
import os
from typing import Any

from hermesx.cli.atoms import connect
from hermesx.cli.output import emit, progress, table
from hermesx.cli.parser import Verbs
from hermesx.core.config import resolve_cluster
from hermesx.core.errors import ConfigurationError, HermesError

__all__ = ["register"]


def cmd_up(args: argparse.Namespace) -> None:
    from hermesx.local.cluster import LocalCluster, NodeSpec

    address = resolve_cluster("-", args.cluster)
    cluster = LocalCluster(
        address.cluster,
        session_timeout=args.session_timeout,
        test_hooks=args.test_hooks,
        secure=not args.insecure,
    )
    specs = [NodeSpec(f"n{i + 1}") for i in range(args.nodes)]
    if args.node:
        specs = [
            NodeSpec(n.partition(":")[0], tuple(filter(None, n.partition(":")[2].split(","))))
            for n in args.node
        ]
    cluster.up(
        specs,
        storesites=args.storesite or ["s1"],
        zk=args.zk,
        progress=progress(args),
        init_stores=args.init_stores,
    )
    data = {
        "cluster": cluster.name,
        "zk": cluster.zk,
        "pids": cluster.procs,
        "dir": str(cluster.dir),
    }
    emit(
        args,
        data,
        lambda: (
            f"cluster {cluster.name!r} is up: ZooKeeper at {cluster.zk}, "
            f"storesites {', '.join(cluster.storesite_ids)}, "
            f"nodes {', '.join(cluster.node_specs)}\n"
            f"logs in {cluster.dir}\n"
            f"use it:  hermesx nodes   "
            f"(or export HERMESX_ZK={cluster.zk} HERMESX_CLUSTER={cluster.name})\n"
            f"stop it: hermesx down"
        ),
    )


def cmd_down(args: argparse.Namespace) -> None:
    from hermesx.local.cluster import LocalCluster

    address_cluster = args.cluster or os.environ.get("HERMESX_CLUSTER") or "local"
    cluster = LocalCluster.load(address_cluster)
    stopped = cluster.down(progress=progress(args))
    emit(
        args,
        {"cluster": cluster.name, "stopped": stopped},
        f"cluster {cluster.name!r} stopped ({len(stopped)} processes)",
    )


def cmd_nodes(args: argparse.Namespace) -> None:
    from hermesx.local.cluster import LocalCluster

    with connect(args) as client:
        # Here, not at the top: importing the CLI must not load gRPC (`hermesx run`).
        from hermesx.rpc.node_client import call_address

        members = client.nodes()
        pids: dict[str, int] = {}
        try:
            local = LocalCluster.load(client.address.cluster)
            pids = {
                k.removeprefix("node-"): v for k, v in local.procs.items() if k.startswith("node-")
            }
        except ConfigurationError:
            pass
        rows = []
        for name in sorted(members):
            m = members[name]
            row: dict[str, Any] = {"name": name, "address": m.address, "tags": list(m.tags)}
            if call_address(m) is not None:
                row["call"] = call_address(m)  # its call channel (docs/DESIGN.md §4.1)
            if m.incarnation:
                # Changes on every restart: atoms recorded at an older one are recovered.
                row["incarnation"] = m.incarnation
            pid = m.data.get("pid", pids.get(name))
            if pid is not None:
                row["pid"] = pid
            try:
                status = client.node_status(name, timeout=2.0)
                row["atoms"] = status.active_atoms
            except HermesError:
                row["atoms"] = None
            rows.append(row)
    emit(
        args,
        rows,
        lambda: (
            table(
                [
                    (
                        r["name"],
                        r["address"],
                        ",".join(r["tags"]) or "-",
                        r.get("pid", "-"),
                        r["atoms"],
                    )
                    for r in rows
                ],
                ["NODE", "ADDRESS", "TAGS", "PID", "ATOMS"],
            )
            if rows
            else "no nodes"
        ),
    )


def register(verbs: Verbs) -> None:
    p = verbs.add("up", cmd_up, "start a local cluster (ZooKeeper, storesite, nodes)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--node", action="append", help="NAME[:TAG,TAG] (repeatable; replaces --nodes)")
    p.add_argument("--storesite", action="append", help="storesite id (repeatable; default s1)")
    p.add_argument("--session-timeout", type=float, default=4.0)
    p.add_argument("--test-hooks", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--insecure", action="store_true", help="no mutual TLS, no roles and no name-service secret"
    )
    p.add_argument(
        "--init-stores",
        action="store_true",
        help="let storesites whose store is missing or damaged start a new one "
        "(a damaged one is set aside; a new cluster's storesites do this anyway)",
    )

    verbs.add("down", cmd_down, "stop the local cluster")
    verbs.add("nodes", cmd_nodes, "list the live nodes")
