"""`hermesx deploy` refuses what it cannot deploy, naming the host, and leaves nothing running.

See docs/DESIGN.md §8 "A cluster over several hosts". Two test hosts
(hermesx/testing/hosts.py): a host that does not answer SSH, an install that
fails on one host, a part that exits at start — each a one-line error naming
the host and what to fix, and afterwards ``hermesx deploy down`` leaves no
process of ours on the hosts.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hermesx.testing.hosts import HostNetwork, host_network_missing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostNetwork]:
    why = host_network_missing()
    if why:
        pytest.skip(why)
    with HostNetwork(2, tmp_path_factory.mktemp("deploy-bad")) as hosts:
        yield hosts


def _file(net: HostNetwork, name: str, **host2: str) -> pathlib.Path:
    h1, h2 = net.hosts
    second = {"ssh": h2.name, "address": h2.address, **host2}
    lines = [f'cluster = "{name}"', f'ssh_config = "{net.ssh_config}"', "session_timeout = 2.0"]
    lines += ["[[host]]", 'name = "h1"', 'ssh = "h1"', f'address = "{h1.address}"']
    lines += [f'dir = "{h1.directory}/{name}"']
    lines += ["[[host]]", 'name = "h2"', f'dir = "{h2.directory}/{name}"']
    lines += [f'{key} = "{value}"' for key, value in second.items()]
    lines += ["[zookeeper]", 'hosts = ["h1"]', "[[storesite]]", 'id = "s1"', 'host = "h1"']
    lines += ["[[node]]", 'name = "n1"', 'host = "h1"', "[[node]]", 'name = "n2"', 'host = "h2"']
    path = net.base / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _deploy(net: HostNetwork, verb: str, path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "hermesx", "deploy", verb, str(path), "-q"]
    return net.run(argv, env=dict(os.environ), timeout=400)


def _ours_running(net: HostNetwork) -> list[str]:
    """Processes in the hosts' namespaces other than their sshd."""
    found = []
    for host in net.hosts:
        pids = subprocess.run(
            ["ip", "netns", "pids", host.namespace], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            try:
                command = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"sshd" not in command:
                found.append(f"{host.name}: {command.decode(errors='replace')[:120]}")
    return found


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_a_host_that_does_not_answer_ssh_is_named_and_nothing_starts(net: HostNetwork) -> None:
    path = _file(net, "nossh", ssh="root@10.77.0.99", address="10.77.0.99")
    line = _one_error_line(_deploy(net, "up", path))
    assert "host h2 (root@10.77.0.99) does not answer SSH" in line
    assert _ours_running(net) == []


def test_an_install_failing_on_one_host_is_named_and_nothing_starts(net: HostNetwork) -> None:
    # A Python that answers its version but cannot make a venv: the install fails there.
    broken = net.host("h2").directory / "broken-python"
    broken.write_text(
        '#!/bin/sh\nif [ "$1" = -c ]; then exec python3 "$@"; fi\n'
        'echo "venv: No space left on device" >&2\nexit 1\n'
    )
    broken.chmod(0o755)
    path = _file(net, "badinstall", python=str(broken))
    line = _one_error_line(_deploy(net, "up", path))
    assert "host h2: installing release" in line and "No space left on device" in line
    assert _ours_running(net) == []


def test_a_part_that_exits_at_start_is_named_and_down_stops_what_started(
    net: HostNetwork,
) -> None:
    path = _file(net, "exits")
    # n2 wants the port sshd holds on h2: it cannot listen and exits.
    path.write_text(
        path.read_text().replace('name = "n2"\nhost = "h2"', 'name = "n2"\nhost = "h2"\nport = 22')
    )
    line = _one_error_line(_deploy(net, "up", path))
    assert "node n2 on host h2 exited" in line and "node-n2.log" in line
    assert _ours_running(net)  # ZooKeeper, s1 and n1 run on h1
    down = _deploy(net, "down", path)
    assert down.returncode == 0, down.stderr
    assert _ours_running(net) == []
