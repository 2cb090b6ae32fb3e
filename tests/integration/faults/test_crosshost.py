"""A cluster deployed over 4 hosts by `hermesx deploy`, under load and faults.

See docs/DESIGN.md §8 "A cluster over several hosts". The hosts are network
namespaces on a bridge, each with its own sshd (hermesx/testing/hosts.py);
``hermesx deploy up`` ships the project to them over SSH and starts a
3-server ZooKeeper ensemble (h1-h3), 2 storesites (h1, h2) and 4 nodes
(one per host) from a cluster file, its ZooKeeper reached over TLS. Each
scenario runs in the control namespace (crosshost_scenario.py) and reports
its calls in the fault table.
The module's cluster is stopped with ``hermesx deploy down`` and the hosts
removed, whatever happens.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from faultkit import Report, Tally, assert_nothing_lost

from hermesx.testing.hosts import HostNetwork, host_network_missing

pytestmark = pytest.mark.timeout(600)

SCENARIO = pathlib.Path(__file__).with_name("crosshost_scenario.py")


def _cluster_file(net: HostNetwork, path: pathlib.Path) -> pathlib.Path:
    lines = ['cluster = "crosshost"', f'ssh_config = "{net.ssh_config}"', "session_timeout = 2.0"]
    for host in net.hosts:
        lines += ["", "[[host]]", f'name = "{host.name}"', f'ssh = "{host.name}"']
        lines += [f'address = "{host.address}"', f'dir = "{host.directory}/hermesx"']
    lines += ["", "[zookeeper]", 'hosts = ["h1", "h2", "h3"]']
    for sid, host in (("s1", "h1"), ("s2", "h2")):
        lines += ["", "[[storesite]]", f'id = "{sid}"', f'host = "{host}"']
    for i, host in enumerate(net.hosts):
        lines += ["", "[[node]]", f'name = "n{i + 1}"', f'host = "{host.name}"']
    path.write_text("\n".join(lines) + "\n")
    return path


class Deployed:
    def __init__(self, net: HostNetwork, cluster_file: pathlib.Path, address: dict[str, Any]):
        self.net = net
        self.cluster_file = cluster_file
        self.address = address
        self.setup = cluster_file.with_name("setup.json")
        self.setup.write_text(
            json.dumps(
                {
                    "cluster_file": str(cluster_file),
                    "address": address,
                    "node_hosts": {f"n{i + 1}": h.name for i, h in enumerate(net.hosts)},
                    "hosts": [
                        {
                            "name": h.name,
                            "namespace": h.namespace,
                            "address": h.address,
                            "cut_rules": str(net.cut_rules(h)),
                        }
                        for h in net.hosts
                    ],
                }
            )
        )

    def hermesx(self, *argv: str, timeout: float = 600) -> Any:
        return self.net.run(
            [sys.executable, "-m", "hermesx", *argv], env=dict(os.environ), timeout=timeout
        )

    def logs(self) -> str:
        out = []
        for host in self.net.hosts:
            for log in sorted((host.directory / "hermesx" / "logs").glob("*.log")):
                lines = log.read_text(errors="replace").splitlines()[-25:]
                out.append(f"===== {host.name}: {log.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def scenario(self, name: str, counter: pathlib.Path) -> dict[str, Any]:
        done = self.net.run(
            [
                sys.executable,
                str(SCENARIO),
                name,
                "--setup",
                str(self.setup),
                "--counter",
                str(counter),
            ],
            env=dict(os.environ),
            timeout=400,
        )
        lines = done.stdout.strip().splitlines()
        try:
            result: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            result = {"error": f"exited {done.returncode}: {done.stderr[-3000:]}"}
        if "error" in result:
            print(self.logs())
            print(result.get("traceback", ""), done.stderr[-3000:])
            pytest.fail(result["error"])
        return result


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    why = host_network_missing()
    if why:
        pytest.skip(why)
    base = tmp_path_factory.mktemp("crosshost")
    with HostNetwork(4, base) as net:
        cluster_file = _cluster_file(net, base / "cluster.toml")
        deployment = Deployed(net, cluster_file, {})
        try:
            done = deployment.hermesx("deploy", "up", str(cluster_file), "--json")
            if done.returncode != 0:
                print(deployment.logs())
                pytest.fail(f"deploy up failed: {done.stderr.strip()[-2000:]}")
            yield Deployed(net, cluster_file, json.loads(done.stdout))
        finally:
            down = deployment.hermesx("deploy", "down", str(cluster_file))
            assert down.returncode == 0, down.stderr


def _judge(result: dict[str, Any], report: Report, *, no_failures: bool) -> Tally:
    t = Tally(**result["tally"])
    t.notes.update(result["facts"])
    report(t)
    assert_nothing_lost(t)
    if no_failures:
        assert t.failed_clear == 0, f"{t.scenario}: {t.failed_clear} calls failed: {t}"
    assert t.acknowledged > 0, t
    return t


def test_zookeeper_speaks_to_other_hosts_only_over_tls_to_the_clusters_certificates(
    deployed: Deployed, atoms: dict[str, pathlib.Path], report: Report
) -> None:
    result = deployed.scenario("zktls", atoms["counter"])
    facts = result["facts"]
    # The plain client port is on the host's loopback only; the TLS port is what clients use.
    assert facts["plain_port"] == "ConnectionRefusedError", facts
    assert all(part.endswith(":2281") for part in facts["connect_string"].split(",")), facts
    assert facts["without_certificate"] is not None, facts  # refused at the handshake
    assert facts["with_certificate"] is None, facts
    _judge(result, report, no_failures=True)


def test_an_atom_moved_across_hosts_is_called_from_every_host(
    deployed: Deployed, atoms: dict[str, pathlib.Path], report: Report
) -> None:
    result = deployed.scenario("move", atoms["counter"])
    _judge(result, report, no_failures=True)
    facts = result["facts"]
    assert [s.split("@")[0] for s in facts["stops"]] == ["n2", "n3", "n4"], facts
    # Every host reached the atom wherever it was: 4 hosts x 3 stops, each answered there.
    assert facts["host_calls_acked"] == facts["host_calls"] == 12, facts
    assert [a for a in facts["answered_by"]] == [["n2"], ["n3"], ["n4"]], facts


def test_a_host_cut_off_fences_its_node_and_its_atom_recovers_elsewhere(
    deployed: Deployed, atoms: dict[str, pathlib.Path], report: Report
) -> None:
    result = deployed.scenario("cut", atoms["counter"])
    _judge(result, report, no_failures=False)
    facts = result["facts"]
    assert facts["recovered"].split("@")[0] in ("n1", "n2", "n3"), facts
    assert facts["fenced_before_recovery"], facts
    # Healed, n4 is back as a new incarnation and holds no copy: one copy serves.
    assert len(facts["holders_after_heal"]) == 1 and "n4" not in facts["holders_after_heal"]


def test_every_process_of_a_host_killed_at_once_and_deploy_up_again(
    deployed: Deployed, atoms: dict[str, pathlib.Path], report: Report
) -> None:
    result = deployed.scenario("killhost", atoms["counter"])
    _judge(result, report, no_failures=False)
    facts = result["facts"]
    # Its ZooKeeper server (the launcher and the JVM), storesite s2 and node n2.
    killed = " | ".join(facts["killed"])
    for part in ("ensemble_member", "java", "storesite serve --id s2", "node serve --name n2"):
        assert part in killed, facts
    assert facts["located"].split("@")[0] != "n2" or int(facts["located"].split("@")[1]) > 1


def test_drain_of_a_node_on_another_host_fails_no_call(
    deployed: Deployed, atoms: dict[str, pathlib.Path], report: Report
) -> None:
    result = deployed.scenario("drain", atoms["counter"])
    _judge(result, report, no_failures=True)
    facts = result["facts"]
    assert facts["drain"]["remaining"] == 0 and facts["moved_to"] != "n3", facts


def test_a_rolling_upgrade_fails_no_call(
    deployed: Deployed, atoms: dict[str, pathlib.Path], report: Report
) -> None:
    result = deployed.scenario("upgrade", atoms["counter"])
    _judge(result, report, no_failures=True)
    facts = result["facts"]
    assert facts["restarted"][:4] == ["node-n1", "node-n2", "node-n3", "node-n4"], facts
    assert facts["new_incarnations"] == ["n1", "n2", "n3", "n4"], facts
