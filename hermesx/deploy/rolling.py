"""`hermesx deploy upgrade`: a rolling restart onto the current bundle (docs/DESIGN.md §8).

The bundle is installed on every host first (nothing stops while it
ships). Then one node at a time: SIGTERM, on which the node drains — it
leaves service and moves its atoms to the other nodes (docs/DESIGN.md §5
"Drain") — and exits; it starts again from the new release and the next
node waits until it is registered as a new incarnation. Calls to its atoms
wait for their moves and are forwarded, so none fails. The storesites
follow, one at a time (calls needing a checkpoint meanwhile wait and are
retried by request id). ZooKeeper is Debian's and keeps running.
"""

from __future__ import annotations

from typing import Any

from hermesx.deploy.deployer import STOP_WAIT_S, Deployer
from hermesx.deploy.hostscripts import start_script, stop_script

__all__ = ["upgrade"]


def upgrade(deployer: Deployer, drain_timeout: float = 30.0) -> dict[str, Any]:
    """Install the current bundle and restart every node, then every storesite, one at a time."""
    plan, say = deployer.plan, deployer.say
    release = deployer.install().release
    with deployer.client() as client:
        incarnations = {name: m.incarnation for name, m in client.naming.nodes().items()}
        incarnations |= {name: m.incarnation for name, m in client.naming.storesites().items()}
    restarted = []
    for node in plan.nodes:
        remote = deployer.remotes[node.host]
        part = f"node-{node.name}"
        say(f"node {node.name}: draining, then restarting on release {release}")
        # SIGTERM drains for at most drain_timeout and the node exits 5 s after at the latest.
        remote.script(
            stop_script(remote.host.dir, [part], "TERM", drain_timeout + 10.0),
            f"stopping node {node.name}",
        )
        remote.script(
            start_script(remote.host.dir, [(part, deployer.node_argv(node, release), "")]),
            f"starting node {node.name}",
        )
        deployer.wait_registered("nodes", deployer.addresses([node]), not_incarnation=incarnations)
        restarted.append(part)
    for site in plan.storesites:
        remote = deployer.remotes[site.host]
        part = f"storesite-{site.id}"
        say(f"storesite {site.id}: restarting on release {release}")
        argv, data = deployer.storesite_argv(site, release)
        remote.script(stop_script(remote.host.dir, [part], "TERM", STOP_WAIT_S), f"stopping {part}")
        remote.script(start_script(remote.host.dir, [(part, argv, data)]), f"starting {part}")
        deployer.wait_registered(
            "storesites", deployer.addresses([site]), not_incarnation=incarnations
        )
        restarted.append(part)
    return {**deployer.address(), "release": release, "restarted": restarted}
