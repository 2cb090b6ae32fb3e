"""The test hosts of hermesx/testing/hosts.py: namespaces on a bridge, each with its own sshd."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from hermesx.testing.hosts import HostNetwork, host_network_missing

pytestmark = pytest.mark.integration


def _own_addresses() -> str:
    return subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout


def test_hosts_answer_ssh_on_their_own_address_and_leave_nothing_behind(
    tmp_path: pathlib.Path,
) -> None:
    why = host_network_missing()
    if why:
        pytest.skip(why)
    with HostNetwork(2, tmp_path) as net:
        h1, h2 = net.hosts
        ssh = ["ssh", "-F", str(net.ssh_config)]
        done = net.run([*ssh, "h1", "ip -4 -o addr show dev eth0; ip netns identify"])
        assert done.returncode == 0, done.stderr
        assert h1.address in done.stdout and h1.namespace in done.stdout
        # Host to host, over the bridge.
        done = net.run([*ssh, "h2", f"ip -4 route get {h1.address}"])
        assert done.returncode == 0 and "dev eth0" in done.stdout, done.stderr
        assert "10.77.0." not in _own_addresses()  # nothing in the machine's own namespace
        net.cut(h2)
        done = net.run([*ssh, "-o", "ConnectTimeout=2", "h2", "true"], timeout=30)
        assert done.returncode == 255  # SSH cannot reach a cut host
        net.heal(h2)
        assert net.run([*ssh, "h2", "true"]).returncode == 0
        namespaces = [h1.namespace, h2.namespace, net.hub, net.control]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in namespaces if n in listed]
