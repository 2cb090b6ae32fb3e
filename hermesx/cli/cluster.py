"""Verbs of a cluster as a whole: `hermesx up` and `down` (a local cluster), `nodes`, `drain`."""

from __future__ import annotations

import argparse
import os
from typing import Any

from hermesx.cli.atoms import connect
from hermesx.cli.output import emit, progress, table
from hermesx.cli.parser import Verbs
from hermesx.core.config import resolve_cluster
from hermesx.core.errors import ConfigurationError, HermesError, UnreachableError

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
        gateway=None if args.gateway == "none" else args.gateway,
    )
    metrics = {part: f"http://{at}/metrics" for part, at in cluster.metrics.items()}
    data = {
        "cluster": cluster.name,
        "zk": cluster.zk,
        "pids": cluster.procs,
        "dir": str(cluster.dir),
        "metrics": metrics,
        "gateway": cluster.gateway_url or None,
    }
    emit(
        args,
        data,
        lambda: (
            f"cluster {cluster.name!r} is up: ZooKeeper at {cluster.zk}, "
            f"storesites {', '.join(cluster.storesite_ids)}, "
            f"nodes {', '.join(cluster.node_specs)}\n"
            + (f"gateway and console at {cluster.gateway_url}\n" if cluster.gateway_url else "")
            + f"logs in {cluster.dir}\n"
            f"metrics: {_metrics_line(metrics)}\n"
            f"use it:  hermesx nodes   "
            f"(or export HERMESX_ZK={cluster.zk} HERMESX_CLUSTER={cluster.name})\n"
            f"stop it: hermesx down"
        ),
    )


def _metrics_line(where: dict[str, str]) -> str:
    return ", ".join(f"{part} {url}" for part, url in sorted(where.items())) or "none"


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
    from hermesx.rpc.ranking import in_service

    with connect(args) as client:
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
            row: dict[str, Any] = {
                "name": name,
                "address": m.address,
                "tags": list(m.tags),
                "state": "in service" if in_service(m) else "draining",
            }
            call = m.data.get("call") if m.data else None
            if call:
                row["call"] = call  # its call channel (docs/DESIGN.md §4.1)
            if m.incarnation:
                # Changes on every restart: atoms recorded at an older one are recovered.
                row["incarnation"] = m.incarnation
            if m.data.get("metrics"):
                row["metrics"] = f"http://{m.data['metrics']}/metrics"
            pid = m.data.get("pid", pids.get(name))
            if pid is not None:
                row["pid"] = pid
            try:
                status = client.node_status(name, timeout=2.0)
                row["atoms"] = status.active_atoms
                # Its budget (docs/DESIGN.md §3): how many more atoms it takes now.
                row["max_atoms"] = status.max_atoms or None
                row["room"] = status.atom_room
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
                        r["state"],
                        ",".join(r["tags"]) or "-",
                        r.get("pid", "-"),
                        r["atoms"],
                        "-" if r.get("room") is None else r["room"],
                    )
                    for r in rows
                ],
                ["NODE", "ADDRESS", "STATE", "TAGS", "PID", "ATOMS", "ROOM"],
            )
            if rows
            else "no nodes"
        ),
    )


def cmd_drain(args: argparse.Namespace) -> None:
    with connect(args) as client:
        say = progress(args)
        say(f"draining node {args.node}: moving its atoms to nodes in service")
        result = client.drain(args.node, timeout=args.timeout)
    data = {
        "node": result.node,
        "moved": result.moved,
        "remaining": result.remaining,
        "failures": list(result.failures),
    }
    text = f"node {result.node} is out of service: {result.moved} atom(s) moved away"
    if result.remaining:
        text += f", {result.remaining} left:\n" + "\n".join(result.failures)
    emit(args, data, text)
    if result.remaining:
        raise UnreachableError(
            f"node {result.node}: {result.remaining} atom(s) could not be moved away "
            f"within {args.timeout:g} s (run `hermesx drain {result.node}` again)"
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
    p.add_argument(
        "--gateway",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where the HTTP gateway and console listen (port 0: a free one; none: no gateway)",
    )

    verbs.add("down", cmd_down, "stop the local cluster")
    verbs.add("nodes", cmd_nodes, "list the live nodes")
    p = verbs.add(
        "drain", cmd_drain, "take a node out of service: move its atoms away, place none there"
    )
    p.add_argument("node", help="the node's name")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds the drain may take")
