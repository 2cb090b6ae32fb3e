"""`hermesx deploy up|status|down|upgrade FILE`: a cluster file brought up over SSH.

The behaviour is in :mod:`hermesx.deploy` (docs/DESIGN.md §8 "A cluster over
several hosts"); this module parses the verbs and prints.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

from hermesx.cli.output import emit, progress, table
from hermesx.cli.parser import Verbs

__all__ = ["register"]


def _plan(args: argparse.Namespace) -> Any:
    from hermesx.deploy.clusterfile import load_cluster_file

    return load_cluster_file(pathlib.Path(args.file))


def _use(data: dict[str, Any]) -> str:
    env = f"HERMESX_ZK={data['zk']} HERMESX_CLUSTER={data['cluster']}"
    if data.get("tls"):
        env += f" HERMESX_TLS={data['tls']}"
    return f"use it:  export {env}\nthen:    hermesx nodes"


def cmd_deploy_up(args: argparse.Namespace) -> None:
    from hermesx.deploy.deployer import Deployer

    plan = _plan(args)
    with Deployer(plan, progress(args)) as deployer:
        data = deployer.up()
    emit(
        args,
        data,
        lambda: (
            f"cluster {data['cluster']!r} is up: ZooKeeper at {data['zk']}, storesites "
            f"{', '.join(data['storesites'])}, nodes {', '.join(data['nodes'])}\n"
            f"{_use(data)}\nstop it: hermesx deploy down {args.file}"
        ),
    )


def cmd_deploy_down(args: argparse.Namespace) -> None:
    from hermesx.deploy.deployer import Deployer
    from hermesx.deploy.teardown import down

    with Deployer(_plan(args), progress(args)) as deployer:
        stopped = down(deployer)
    count = sum(len(parts) for parts in stopped.values())
    emit(args, {"stopped": stopped}, f"stopped {count} processes on {len(stopped)} hosts")


def cmd_deploy_status(args: argparse.Namespace) -> None:
    from hermesx.deploy.deployer import Deployer
    from hermesx.deploy.status import status

    with Deployer(_plan(args), progress(args)) as deployer:
        rows = status(deployer)
        address = deployer.address()
    emit(
        args,
        {**address, "parts": rows},
        lambda: table(
            [
                (r["host"], r["part"], r.get("pid") or "-", r["state"], r.get("registered") or "-")
                for r in rows
            ],
            ["HOST", "PART", "PID", "STATE", "REGISTERED AT"],
        ),
    )


def cmd_deploy_upgrade(args: argparse.Namespace) -> None:
    from hermesx.deploy.deployer import Deployer
    from hermesx.deploy.rolling import upgrade

    with Deployer(_plan(args), progress(args)) as deployer:
        data = upgrade(deployer, drain_timeout=args.drain_timeout)
    emit(
        args,
        data,
        f"cluster {data['cluster']!r} runs release {data['release']}: restarted "
        f"{', '.join(data['restarted'])} one at a time",
    )


def register(verbs: Verbs) -> None:
    deploy = verbs.group("deploy", "a cluster over several hosts, from a cluster file (SSH)")
    for name, func, text in (
        ("up", cmd_deploy_up, "install and start every part of the cluster file"),
        ("status", cmd_deploy_status, "each part's process and registration"),
        ("down", cmd_deploy_down, "stop every part the cluster file's hosts run"),
        ("upgrade", cmd_deploy_upgrade, "install the current release; restart nodes one by one"),
    ):
        p = deploy.add(name, func, text)
        p.add_argument("file", help="the cluster file (cluster.toml)")
        if name == "upgrade":
            p.add_argument(
                "--drain-timeout", type=float, default=30.0, help="seconds each node may drain"
            )
