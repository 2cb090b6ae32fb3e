"""The gateway's tests: a cluster with its HTTP gateway, and an HTTP client that trusts it.

The gateway runs as ``hermesx up`` runs it (``LocalCluster.start_gateway``):
a real process serving HTTPS with its cluster certificate.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from hermesx.local.cluster import LocalCluster

ClusterFactory = Callable[..., LocalCluster]

# Short enough for a test of a slow client, long enough for a loaded machine.
BODY_TIMEOUT_S = 2.0


@dataclass
class Gateway:
    cluster: LocalCluster
    url: str
    http: httpx.Client

    @property
    def ca(self) -> str:
        return str(self.cluster.tls_dir / "ca.pem")

    def raw(self, request: bytes, timeout: float = 10.0) -> socket.socket:
        """A TLS socket to the gateway that has sent ``request`` as it is."""
        host, _, port = self.url.removeprefix("https://").rpartition(":")
        context = ssl.create_default_context(cafile=self.ca)
        sock = context.wrap_socket(
            socket.create_connection((host, int(port)), timeout=timeout), server_hostname=host
        )
        sock.sendall(request)
        return sock


def read_status(sock: socket.socket) -> tuple[int, bytes]:
    """The status and the rest of what the gateway answered on a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, head + b"\r\n\r\n" + body


def start_gateway(cluster: LocalCluster) -> Gateway:
    url = cluster.start_gateway(options=["--body-timeout", str(BODY_TIMEOUT_S), "--period", "0.3"])
    trust = ssl.create_default_context(cafile=str(cluster.tls_dir / "ca.pem"))
    http = httpx.Client(base_url=url, verify=trust, timeout=60.0)
    return Gateway(cluster, url, http)


@pytest.fixture(scope="module")
def gateway(cluster_factory: ClusterFactory) -> Iterator[Gateway]:
    """A 3-node cluster (n1, n2, n3) with its gateway, shared by a module's tests."""
    gw = start_gateway(cluster_factory(3))
    try:
        yield gw
    finally:
        gw.http.close()


@pytest.fixture(scope="module")
def recovering_gateway(cluster_factory: ClusterFactory) -> Iterator[Gateway]:
    """The same, on a cluster of its own with 2 s sessions: a test kills its nodes."""
    gw = start_gateway(cluster_factory(3, session_timeout=2.0))
    try:
        yield gw
    finally:
        gw.http.close()


def hermesx_json(cluster: LocalCluster, *argv: str) -> dict[str, Any]:
    """What `hermesx ARGV --json` prints about ``cluster``, as a user runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "hermesx", *argv, "--json", "--zk", cluster.zk],
        env={**os.environ, "HERMESX_CLUSTER": cluster.name},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return data


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def open_browser() -> Any:
    """Debian's headless Chromium under selenium (scripts/bootstrap.sh installs both)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        # The gateway's certificate is signed by the cluster's own CA.
        "--ignore-certificate-errors",
        "--window-size=1400,900",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = open_browser()
    try:
        yield driver
    finally:
        driver.quit()
