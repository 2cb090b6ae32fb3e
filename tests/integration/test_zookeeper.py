"""The ZooKeeper launcher: loopback only, clean stop, clear failures, no orphans."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from hermesx.local.cluster import alive
from hermesx.testing.reaper import tethered
from hermesx.testing.wait import wait_until
from nameservice import NameService, ZooKeeperError
from nameservice import zookeeper as zk
from nameservice.zookeeper import ZooKeeperServer, four_letter

pytestmark = pytest.mark.integration


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as listing:
                lines = listing.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":
                found.add(address)
    return found


def test_server_serves_on_loopback_only_and_stops_cleanly() -> None:
    server = ZooKeeperServer()
    server.start()
    try:
        assert server.connect_string == f"127.0.0.1:{server.port}"
        assert "Mode: standalone" in four_letter(server.port, "srvr")
        assert _listeners(server.port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0
        with NameService(server.connect_string, "launcher") as service:
            service.bind("x", "s1:" + "0" * 32)
            assert service.resolve("x") == "s1:" + "0" * 32
        pid = server.pid
        assert pid is not None and alive(pid)
        data_dir = server.data_dir
        assert (data_dir / "zoo.cfg").read_text().count("clientPortAddress=127.0.0.1") == 1
    finally:
        server.stop()
    assert not alive(pid)
    assert not data_dir.exists()
    assert server.pid is None
    assert four_letter(server.port, "srvr") == ""


def test_kill_stops_the_server_at_once() -> None:
    server = ZooKeeperServer()
    server.start()
    try:
        pid = server.pid
        assert pid is not None
        server.kill()
        assert not alive(pid)
        assert four_letter(server.port, "srvr") == ""
    finally:
        server.stop()


def test_failed_start_reports_the_server_log() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = ZooKeeperServer(port=taken.getsockname()[1])
        with pytest.raises(
            ZooKeeperError, match=r"(?s)exited during start.*Address already in use"
        ):
            server.start(timeout=30.0)
        assert server.pid is None
        server.stop()


def test_missing_install_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.delenv("HERMESX_ZOOKEEPER_CLASSPATH", raising=False)
    monkeypatch.setattr(zk, "_JAVA_DIR", tmp_path)
    with pytest.raises(ZooKeeperError, match="apt-get install zookeeper"):
        zk.find_zookeeper()


_PARENT = textwrap.dedent(
    """
    import time
    from nameservice.zookeeper import ZooKeeperServer
    server = ZooKeeperServer()
    server.start()
    print(server.pid, flush=True)
    time.sleep(60)  # a deliberate hold: the test kills this process meanwhile
    """
)


def test_server_does_not_outlive_a_killed_parent() -> None:
    parent = tethered([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    zk_pid = None
    try:
        assert parent.stdout is not None
        zk_pid = int(parent.stdout.readline())
        assert alive(zk_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        wait_until(lambda: not alive(zk_pid), 10.0, "the server to stop with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if zk_pid is not None and alive(zk_pid):
            os.kill(zk_pid, signal.SIGKILL)
        if parent.stdout is not None:
            parent.stdout.close()
