"""`hermesx deploy down`: stop every part a cluster file's hosts run (docs/DESIGN.md §8).

Nodes first (SIGINT: the whole cluster stops, a drain would have nowhere to
go), then storesites, then ZooKeeper, each kind on all hosts at once; every
part is found from its pid file, so what a failed ``deploy up`` started is
stopped too. A part that does not stop within 15 s is killed. A host that
does not answer SSH is named, and the others are stopped all the same.
"""

from __future__ import annotations

from hermesx.core.errors import UnreachableError
from hermesx.deploy.deployer import STOP_WAIT_S, Deployer
from hermesx.deploy.hostscripts import stop_script
from hermesx.deploy.remote import Remote

__all__ = ["down"]


def down(deployer: Deployer) -> dict[str, list[str]]:
    """Stop every part any `up` started: nodes, then storesites, then ZooKeeper."""
    stopped: dict[str, list[str]] = {name: [] for name in deployer.plan.hosts}
    unreachable: list[str] = []
    for parts, sig in ((["node-"], "INT"), (["storesite-"], "TERM"), (["zookeeper"], "TERM")):
        deployer.say(f"stopping {parts[0].rstrip('-')}s")

        def stop(remote: Remote, parts: list[str] = parts, sig: str = sig) -> str:
            script = stop_script(remote.host.dir, parts, sig, STOP_WAIT_S)
            return remote.script(script, "stopping parts").stdout

        reachable = [h for h in deployer.plan.hosts if h not in unreachable]
        done = deployer.each(reachable, stop, raise_first=False)
        unreachable += [h for h in deployer.plan.hosts if h not in done and h not in unreachable]
        for host, out in done.items():
            stopped[host] += [line.split()[0] for line in out.splitlines() if line.strip()]
    if unreachable:
        raise UnreachableError(
            f"hosts {', '.join(unreachable)} could not be reached: their parts may still "
            "run; run `hermesx deploy down` again once they answer SSH"
        )
    return stopped
