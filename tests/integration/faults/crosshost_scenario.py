"""Run one cross-host scenario from the control namespace of a test host network.

Started by test_crosshost.py as ``ip netns exec CONTROL python crosshost_scenario.py
SCENARIO --setup FILE --counter WASM``: ``FILE`` is JSON naming the cluster
file, the cluster's address (as ``hermesx deploy up --json`` printed it) and
the hosts (name, namespace, address). The cluster runs on the hosts — a
3-server ZooKeeper ensemble, 2 storesites, 4 nodes, each host its own
network namespace with its own sshd — deployed by ``hermesx deploy up``.
Clients run here, in the control namespace, and on the hosts themselves
(``ip netns exec HOST python -m hermesx invoke``). The tally of the load's
calls (faultkit) and the facts the test asserts are printed as one JSON
object on the last line.

Scenarios (docs/DESIGN.md §5, §6, §8, §10):

``zktls``
    ZooKeeper answers other hosts only on its TLS port, only to a client
    showing a certificate of the cluster.

``move``
    An atom moves n1 → n2 → n3 → n4 under load; at each stop it is called
    from every host.
``cut``
    The host of the atom's node is cut off by nftables in its namespace: its
    node fences, the atom is recovered on another host; after healing the
    node comes back as a new incarnation without the atom: one copy serves.
``killhost``
    Every process of the host of the atom's node (a ZooKeeper server, a
    storesite, the node) is killed at once; ``hermesx deploy up`` again
    starts what is missing.
``upgrade``
    ``hermesx deploy upgrade``: every node drains and restarts, then every
    storesite, one at a time, under load.
``drain``
    ``hermesx drain`` of the node hosting the atom under load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
import traceback
from typing import Any

from faultkit import CallRecord, LoadGenerator, final_value, tally

from hermesx.client import Client
from hermesx.core.errors import HermesError
from hermesx.testing.wait import wait_until

log = logging.getLogger("crosshost_scenario")


class Setup:
    def __init__(self, path: pathlib.Path) -> None:
        data = json.loads(path.read_text())
        self.cluster_file = pathlib.Path(data["cluster_file"])
        self.address: dict[str, Any] = data["address"]
        self.hosts: list[dict[str, str]] = data["hosts"]
        self.node_hosts: dict[str, str] = data["node_hosts"]
        self.env = {
            **os.environ,
            "HERMESX_ZK": self.address["zk"],
            "HERMESX_CLUSTER": self.address["cluster"],
        }
        if self.address.get("tls"):
            self.env["HERMESX_TLS"] = self.address["tls"]

    def client(self) -> Client:
        return Client(self.address["zk"], self.address["cluster"], tls=self.address.get("tls"))

    def load(self, target: str, **options: Any) -> LoadGenerator:
        # Its clients find the certificates through HERMESX_TLS (set in main).
        return LoadGenerator(self.address["zk"], self.address["cluster"], target, **options)

    def hermesx(self, *argv: str, namespace: str | None = None, timeout: float = 300) -> Any:
        prefix = ["ip", "netns", "exec", namespace] if namespace else []
        done = subprocess.run(
            [*prefix, sys.executable, "-m", "hermesx", *argv, "--json", "-q"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(f"hermesx {' '.join(argv)} failed: {done.stderr.strip()}")
        return json.loads(done.stdout)


def _call_from_hosts(setup: Setup, target: str) -> list[CallRecord]:
    """One ``hermesx invoke TARGET incr 1`` from every host at once, each recorded."""
    env = {k: v for k, v in setup.env.items()}
    started = time.monotonic()
    running = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                host["namespace"],
                sys.executable,
                "-m",
                "hermesx",
                "invoke",
                target,
                "incr",
                "1",
                "--json",
                "-q",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for host in setup.hosts
    ]
    records = []
    for host, proc in zip(setup.hosts, running, strict=True):
        out, err = proc.communicate(timeout=120)
        ok = proc.returncode == 0
        data = json.loads(out) if ok else {}
        records.append(
            CallRecord(
                request_id=f"host-{host['name']}-{started}",
                started=started,
                ended=time.monotonic(),
                value=data.get("result"),
                node=data.get("tad", {}).get("node", ""),
                age=data.get("tad", {}).get("age", 0),
                error_kind="" if ok else "cli",
                error="" if ok else err.strip()[-300:],
                clear=ok or err.startswith("error: "),
                storesite_fallback=False,
            )
        )
    return records


def scenario_move(setup: Setup, counter: pathlib.Path, facts: dict[str, Any]) -> dict[str, Any]:
    with setup.client() as client:
        client.create(counter, name="mover", on="n1", checkpoint="every-call")
        load = setup.load("mover")
        from_hosts: list[CallRecord] = []
        stops = []
        with load:
            load.wait_acks(20)
            for node in ("n2", "n3", "n4"):
                client.migrate("mover", node)
                where = client.locate("mover")
                stops.append(f"{where.node}@{where.age}")
                calls = _call_from_hosts(setup, "mover")
                from_hosts += calls
                facts.setdefault("answered_by", []).append(sorted({c.node for c in calls}))
                load.wait_acks(10, since=time.monotonic())
        final = final_value(client, "mover")
    facts.update(
        stops=stops,
        host_calls=len(from_hosts),
        host_calls_acked=sum(1 for c in from_hosts if c.ok),
        host_call_errors=[c.error for c in from_hosts if not c.ok][:3],
    )
    records = [*load.records, *from_hosts]
    return tally(
        "cross-host: an atom moved over 4 hosts, called from each", records, final
    ).as_dict()


def _holders(client: Client, guid: str) -> list[str]:
    holders = []
    for name, member in client.nodes().items():
        try:
            tad, _ = client.node_client.holding(member, guid)
        except HermesError:
            continue
        if tad is not None:
            holders.append(name)
    return holders


def scenario_cut(setup: Setup, counter: pathlib.Path, facts: dict[str, Any]) -> dict[str, Any]:
    victim = next(h for h in setup.hosts if h["name"] == setup.node_hosts["n4"])
    with setup.client() as client:
        guid = client.create(counter, name="cutee", on="n4", checkpoint="every-call")
        before = client.nodes()["n4"].incarnation
        load = setup.load("cutee")
        with load:
            load.wait_acks(20)
            subprocess.run(
                ["ip", "netns", "exec", victim["namespace"], "nft", "-f", victim["cut_rules"]],
                check=True,
            )
            cut_at = time.monotonic()
            load.wait_acks(20, since=cut_at, timeout=120)
            where = client.locate("cutee")
            facts["recovered"] = f"{where.node}@{where.age}"
            facts["fenced_before_recovery"] = "n4" not in client.nodes()
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    victim["namespace"],
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    "hxcut",
                ],
                check=True,
            )
            healed_at = time.monotonic()
            wait_until(
                lambda: "n4" in client.nodes() and client.nodes()["n4"].incarnation != before,
                90.0,
                "n4 to register again after healing",
            )
            facts["rejoined_s"] = round(time.monotonic() - healed_at, 1)
            load.wait_acks(10, since=time.monotonic())
            facts["holders_after_heal"] = _holders(client, guid)
        final = final_value(client, "cutee")
    return tally(
        "cross-host: a host cut off by nftables (recovered elsewhere)", load.records, final
    ).as_dict()


def scenario_upgrade(setup: Setup, counter: pathlib.Path, facts: dict[str, Any]) -> dict[str, Any]:
    with setup.client() as client:
        client.create(counter, name="upgraded", on="n2", checkpoint="every-call")
        before = {n: m.incarnation for n, m in client.nodes().items()}
        load = setup.load("upgraded")
        with load:
            load.wait_acks(20)
            started = time.monotonic()
            result = setup.hermesx("deploy", "upgrade", str(setup.cluster_file), timeout=600)
            facts["upgrade_s"] = round(time.monotonic() - started, 1)
            load.wait_acks(10, since=time.monotonic())
        after = {n: m.incarnation for n, m in client.nodes().items()}
        final = final_value(client, "upgraded")
    facts["restarted"] = result["restarted"]
    facts["new_incarnations"] = sorted(n for n in after if after[n] != before.get(n))
    return tally(
        "cross-host: rolling upgrade of 4 nodes and 2 storesites", load.records, final
    ).as_dict()


def scenario_drain(setup: Setup, counter: pathlib.Path, facts: dict[str, Any]) -> dict[str, Any]:
    with setup.client() as client:
        client.create(counter, name="drained", on="n3", checkpoint="every-call")
        load = setup.load("drained", settle=False)
        with load:
            load.wait_acks(20)
            facts["drain"] = setup.hermesx("drain", "n3")
            load.wait_acks(10, since=time.monotonic())
        facts["moved_to"] = client.locate("drained").node
        final = final_value(client, "drained")
    return tally("cross-host: drain of the hosting node", load.records, final).as_dict()


def scenario_zktls(setup: Setup, counter: pathlib.Path, facts: dict[str, Any]) -> dict[str, Any]:
    """ZooKeeper answers other hosts only over TLS, and only to the cluster's certificates."""
    import socket

    from nameservice import ZooKeeperTLS
    from nameservice.ensemble_member import ensemble_serving

    tls = pathlib.Path(setup.address["tls"])
    first = setup.hosts[0]["address"]
    try:
        socket.create_connection((first, 2181), timeout=3).close()
        facts["plain_port"] = "open"
    except OSError as exc:
        facts["plain_port"] = type(exc).__name__
    no_cert = ZooKeeperTLS(str(tls / "ca.pem"), "", "")
    facts["without_certificate"] = ensemble_serving(setup.address["zk"], 4.0, no_cert)
    with_cert = ZooKeeperTLS(str(tls / "ca.pem"), str(tls / "client.pem"), str(tls / "client.key"))
    facts["with_certificate"] = ensemble_serving(setup.address["zk"], 10.0, with_cert)
    facts["connect_string"] = setup.address["zk"]
    with setup.client() as client:
        client.create(counter, name="zktls", on="n1")
        load = setup.load("zktls")
        with load:
            load.wait_acks(20)
        final = final_value(client, "zktls")
    return tally("cross-host: ZooKeeper over TLS", load.records, final).as_dict()


def _kill_host(namespace: str) -> list[str]:
    """SIGKILL every process of the host but its sshd, all at once; what was killed."""
    pids = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=True
    ).stdout.split()
    killed = []
    for pid in pids:
        try:
            command = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"sshd" in command:
            continue
        what = command.decode(errors="replace").split(" -m ")[-1][:40]
        if not command:
            # A zombie has no command line: it had exited already, unreaped.
            with contextlib.suppress(OSError):
                what = pathlib.Path(f"/proc/{pid}/comm").read_text().strip() + " (had exited)"
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
            killed.append(what)
    return killed


def scenario_killhost(setup: Setup, counter: pathlib.Path, facts: dict[str, Any]) -> dict[str, Any]:
    """Every process of h2 (a ZooKeeper server, storesite s2, node n2) killed at once; then
    ``hermesx deploy up`` again starts what is missing."""
    victim = next(h for h in setup.hosts if h["name"] == setup.node_hosts["n2"])
    with setup.client() as client:
        client.create(counter, name="killed", on="n2", checkpoint="every-call")
        load = setup.load("killed")
        with load:
            load.wait_acks(20)
            facts["killed"] = _kill_host(victim["namespace"])
            killed_at = time.monotonic()
            setup.hermesx("deploy", "up", str(setup.cluster_file), timeout=300)
            facts["restarted_s"] = round(time.monotonic() - killed_at, 1)
            load.wait_acks(20, since=time.monotonic(), timeout=120)
        where = client.locate("killed")
        facts["located"] = f"{where.node}@{where.age}"
        final = final_value(client, "killed")
    return tally(
        "cross-host: every process of a host killed at once", load.records, final
    ).as_dict()


SCENARIOS = {
    "killhost": scenario_killhost,
    "zktls": scenario_zktls,
    "move": scenario_move,
    "cut": scenario_cut,
    "upgrade": scenario_upgrade,
    "drain": scenario_drain,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--setup", required=True, type=pathlib.Path)
    parser.add_argument("--counter", required=True, type=pathlib.Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    facts: dict[str, Any] = {}
    result: dict[str, Any] = {"scenario": args.scenario, "facts": facts}
    status = 0
    try:
        setup = Setup(args.setup)
        os.environ.update({k: v for k, v in setup.env.items() if k.startswith("HERMESX_")})
        result["tally"] = SCENARIOS[args.scenario](setup, args.counter, facts)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        status = 1
    print(json.dumps(result, sort_keys=True, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
