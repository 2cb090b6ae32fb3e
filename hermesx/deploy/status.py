"""`hermesx deploy status`: each part's process and registration (docs/DESIGN.md §8)."""

from __future__ import annotations

import contextlib
from typing import Any

from hermesx.core.errors import HermesError
from hermesx.deploy.deployer import Deployer
from hermesx.deploy.hostscripts import status_script

__all__ = ["status"]


def status(deployer: Deployer) -> list[dict[str, Any]]:
    """Each part: host, pid, running or not, and what the name service lists."""
    seen = deployer.each(
        deployer.plan.hosts,
        lambda r: r.script(status_script(r.host.dir), "reading status").stdout,
        raise_first=False,
    )
    registered: dict[str, Any] = {}
    with contextlib.suppress(HermesError), deployer.client() as client:
        client.start()
        registered |= {f"node-{k}": v for k, v in client.naming.nodes().items()}
        registered |= {f"storesite-{k}": v for k, v in client.naming.storesites().items()}
    rows = []
    for host in deployer.plan.hosts:
        lines = seen.get(host)
        if lines is None:
            rows.append({"host": host, "part": "-", "pid": None, "state": "unreachable"})
            continue
        for line in lines.splitlines():
            fields = line.split()
            if len(fields) != 3:
                continue
            part, pid, state = fields
            member = registered.get(part)
            row: dict[str, Any] = {"host": host, "part": part, "state": state}
            row["pid"] = int(pid) if pid.isdigit() else None
            row["registered"] = member.address if member is not None else None
            if member is not None and member.data.get("draining"):
                row["state"] = "draining"
            rows.append(row)
    return rows
