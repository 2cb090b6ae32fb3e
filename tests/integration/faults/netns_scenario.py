"""Run one fault scenario inside a network namespace, cutting links with nftables.

Started by test_netns_faults.py as ``ip netns exec NS python netns_scenario.py
SCENARIO --counter WASM --home DIR --json``. Inside the namespace 127.0.0.1
is the namespace's own loopback, so the nftables table this script adds
(``table inet hxfault``) filters only the traffic of the processes it starts
and never the host's; deleting the namespace removes the table.

Everything runs here: a ZooKeeper, a local cluster (storesite and nodes, with
the cluster's mutual TLS), the counting load of faultkit. The tally and the
facts the test asserts are printed as one JSON object on the last line of
stdout. docs/DESIGN.md §6 is what is proved: an acknowledged call is never lost,
none runs twice, and a node cut from the name service fences itself before
its atom is recovered elsewhere.

Scenarios:

``partition``
    Node n1 reaches ZooKeeper through its own port P, which the kernel
    rewrites to ZooKeeper's port (``dnat``); no userspace process relays the
    bytes. The cut is one rule that drops every packet of connections
    originally addressed to P (``ct original proto-dst P drop``): n1's
    ZooKeeper traffic, in both directions, new connections included, while
    clients and the other nodes still reach n1 and ZooKeeper.
``loss``
    A share of the packets to and from the hosting node's gRPC port and the
    storesite's port is dropped at random (``numgen random mod 100 < N``)
    for a few seconds under load; TCP retransmits and the client retries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pathlib
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

from faultkit import (
    CopyWatcher,
    LoadGenerator,
    fencing,
    final_value,
    latency_ms,
    serves_here,
    tally,
)

from hermesx.client import Client
from hermesx.local.cluster import LocalCluster, NodeSpec
from nameservice.zookeeper import ZooKeeperServer, free_port

log = logging.getLogger("netns_scenario")

TABLE = "hxfault"
SESSION_TIMEOUT = 2.0


# ---------------------------------------------------------------- nftables


def nft(script: str) -> None:
    """Apply an nft script; this process runs inside the test's namespace, so does nft."""
    done = subprocess.run(
        ["nft", "-f", "-"], input=script, text=True, capture_output=True, timeout=10.0
    )
    if done.returncode != 0:
        raise RuntimeError(f"nft refused the rules: {done.stderr.strip()}\n{script}")


def nft_counters() -> dict[str, int]:
    """Packets counted by each rule of our table that carries a ``comment``: comment -> packets."""
    done = subprocess.run(
        ["nft", "-j", "list", "table", "inet", TABLE],
        capture_output=True,
        text=True,
        timeout=10.0,
        check=True,
    )
    counts: dict[str, int] = {}
    for item in json.loads(done.stdout)["nftables"]:
        rule = item.get("rule")
        if not rule or "comment" not in rule:
            continue
        for expr in rule["expr"]:
            if "counter" in expr:
                counts[rule["comment"]] = counts.get(rule["comment"], 0) + int(
                    expr["counter"]["packets"]
                )
    return counts


def base_table(extra_nat: str = "") -> str:
    # The filter chain starts empty; faults are rules added to it and flushed to heal.
    return f"""
table inet {TABLE} {{
    chain nat_out {{
        type nat hook output priority -100; policy accept;
        {extra_nat}
    }}
    chain faults {{
        type filter hook output priority 0; policy accept;
    }}
}}
"""


def heal() -> None:
    nft(f"flush chain inet {TABLE} faults\n")


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


# ---------------------------------------------------------------- the cluster


@contextlib.contextmanager
def running_cluster(
    zk: ZooKeeperServer, nodes: list[str], node_zk: dict[str, str] | None = None
) -> Iterator[LocalCluster]:
    """A local cluster on ``zk``; nodes in ``node_zk`` get their own connect string."""
    cluster = LocalCluster(f"nsf{os.getpid()}", session_timeout=SESSION_TIMEOUT, test_hooks=True)
    special = node_zk or {}
    try:
        cluster.up(
            [NodeSpec(n) for n in nodes if n not in special],
            storesites=("s1",),
            zk=zk.connect_string,
        )
        for node, connect in special.items():
            # LocalCluster hands every process its own zk string; swap it for this node only.
            cluster.zk = connect
            try:
                cluster.start_node(NodeSpec(node))
            finally:
                cluster.zk = zk.connect_string
                cluster.save()
        if special:
            cluster.wait_registered(nodes=nodes)
        yield cluster
    finally:
        cluster.down()


# ---------------------------------------------------------------- scenarios


def scenario_partition(counter: pathlib.Path, facts: dict[str, Any]) -> dict[str, Any]:
    with ZooKeeperServer() as zk:
        link_port = free_port()
        nft(base_table(f"ip daddr 127.0.0.1 tcp dport {link_port} dnat ip to 127.0.0.1:{zk.port}"))
        n1_zk = f"127.0.0.1:{link_port}"
        with running_cluster(zk, ["n1", "n2", "n3"], node_zk={"n1": n1_zk}) as cluster:
            return _partition(cluster, counter, link_port, facts)


def _partition(
    cluster: LocalCluster, counter: pathlib.Path, link_port: int, facts: dict[str, Any]
) -> dict[str, Any]:
    with Client(cluster.zk, cluster.name) as client:
        guid = client.create(counter, name="c", on="n1", checkpoint="every-call")
        addresses = {name: m.address for name, m in client.nodes().items()}
        load = LoadGenerator(client.address.zk, client.address.cluster, "c")
        with load, CopyWatcher(addresses, guid, cluster=cluster.name) as watcher:
            load.wait_acks(30)
            nft(
                f"add rule inet {TABLE} faults meta l4proto tcp "
                f'ct original proto-dst {link_port} counter drop comment "zk-link"\n'
            )
            cut_at = time.monotonic()
            load.wait_recovered_elsewhere("n1")
            # n1 is still up and reachable by clients (it answers), yet does not serve.
            facts["n1_serves_after_recovery"] = serves_here(watcher.stubs["n1"], guid)
        final = final_value(client, "c")
        where = client.locate("c")
        facts["dropped_packets"] = nft_counters().get("zk-link", 0)
        heal()
        healed_at = time.monotonic()
        # Back in the name service, n1 registers again and holds no copy.
        cluster.wait_registered(nodes=["n1"])
        facts["rejoined_after_heal_s"] = round(time.monotonic() - healed_at, 2)
        n1_watch = CopyWatcher({"n1": addresses["n1"]}, guid, cluster=cluster.name)
        n1_after_heal = n1_watch.probe_once()
        n1_watch.close()
        facts["final_after_heal"] = final_value(client, "c")
    records = load.records
    t = tally("7 netns: node cut from ZooKeeper (nftables)", records, final)
    fenced = fencing(records, "n1", cut_at, where, watcher)
    t.notes.update(
        fenced.notes,
        dropped_packets=facts["dropped_packets"],
        rejoined_after_heal_s=facts["rejoined_after_heal_s"],
    )
    facts.update(
        final=final,
        recovered_node=where.node,
        recovered_age=where.age,
        probe_rounds=len(watcher.rounds),
        most_serving=watcher.most_serving(),
        two_serving_rounds=[list(r.serving) for r in watcher.rounds if len(r.serving) > 1][:3],
        old_started_before_first_new_answer=fenced.old_started_before_first_new_answer,
        ran_late_on_old=len(fenced.ran_late_on_old),
        n1_after_heal_active=list(n1_after_heal.active),
        n1_after_heal_serving=list(n1_after_heal.serving),
    )
    return t.as_dict()


def scenario_loss(counter: pathlib.Path, facts: dict[str, Any], percent: int) -> dict[str, Any]:
    with ZooKeeperServer() as zk:
        nft(base_table())
        with running_cluster(zk, ["n1", "n2"]) as cluster:
            return _loss(cluster, counter, percent, facts)


def _loss(
    cluster: LocalCluster, counter: pathlib.Path, percent: int, facts: dict[str, Any]
) -> dict[str, Any]:
    with Client(cluster.zk, cluster.name) as client:
        client.create(counter, name="c", on="n1", checkpoint="every-call")
        # A part's gRPC port and its call channel's (docs/DESIGN.md §4.1): calls and
        # checkpoints travel on the latter, everything else on the former.
        node, site = client.nodes()["n1"], client.naming.storesites()["s1"]
        links = [(port_of(node.address), "node"), (port_of(site.address), "storesite")]
        links += [
            (port_of(m.data["call"]), label)
            for m, label in ((node, "node"), (site, "storesite"))
            if m.data.get("call")
        ]
        load = LoadGenerator(client.address.zk, client.address.cluster, "c", threads=3)
        with load:
            load.wait_acks(20)
            clean_from = time.monotonic()
            time.sleep(2.0)  # a deliberate window: calls over clean links, the baseline
            # Both directions of both links: requests and replies, node <-> storesite.
            rules = "".join(
                f"add rule inet {TABLE} faults tcp {way} {port} "
                f'numgen random mod 100 < {percent} counter drop comment "{label}"\n'
                for port, label in links
                for way in ("dport", "sport")
            )
            nft(rules)
            lossy_from = time.monotonic()
            # The deliberate window of loss: at 10 % tens of packets are dropped
            # on each link while the calls go on.
            time.sleep(4.0)
            counts = nft_counters()
            heal()
            healed_at = time.monotonic()
            load.wait_acks(20, since=healed_at)
        final = final_value(client, "c")
        where = client.locate("c")
    records = load.records
    t = tally(f"8 netns: {percent}% packet loss (nftables)", records, final)
    clean = [r for r in records if clean_from <= r.started and r.ended < lossy_from]
    lossy = [r for r in records if lossy_from <= r.started and r.ended <= healed_at]
    t.notes.update(
        clean_calls=len(clean),
        lossy_calls=len(lossy),
        clean_p50_ms=latency_ms(clean, 0.5),
        clean_p99_ms=latency_ms(clean, 0.99),
        lossy_p50_ms=latency_ms(lossy, 0.5),
        lossy_p99_ms=latency_ms(lossy, 0.99),
        dropped_to_node=counts.get("node", 0),
        dropped_to_storesite=counts.get("storesite", 0),
    )
    facts.update(
        final=final,
        located=f"{where.node}@{where.age}",
        lossy_acked=sum(1 for r in lossy if r.ok),
        lossy_failed=sum(1 for r in lossy if not r.ok),
        dropped_to_node=counts.get("node", 0),
        dropped_to_storesite=counts.get("storesite", 0),
    )
    return t.as_dict()


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=("partition", "loss"))
    parser.add_argument("--counter", required=True, type=pathlib.Path, help="counter atom .wasm")
    parser.add_argument("--home", required=True, type=pathlib.Path, help="HERMESX_HOME to use")
    parser.add_argument("--loss-percent", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args.home.mkdir(parents=True, exist_ok=True)
    os.environ["HERMESX_HOME"] = str(args.home)
    facts: dict[str, Any] = {}
    result: dict[str, Any] = {"scenario": args.scenario, "facts": facts}
    status = 0
    try:
        if args.scenario == "partition":
            result["tally"] = scenario_partition(args.counter, facts)
        else:
            result["tally"] = scenario_loss(args.counter, facts, args.loss_percent)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        status = 1
    finally:
        # The namespace goes with the test; the table goes now, so a rerun starts clean.
        subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True, timeout=10.0)
    if args.json:
        print(json.dumps(result, sort_keys=True, default=str))
    else:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
