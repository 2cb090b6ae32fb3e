"""One server of a ZooKeeper ensemble spread over hosts (docs/DESIGN.md §7, §8).

``python -m nameservice.ensemble_member --dir DIR --id N --address A
--client-port P --servers 1=A1:PEER:ELECT,2=...`` runs Debian's ZooKeeper
as a child JVM (:mod:`nameservice.zookeeper`) with a ``zoo.cfg`` whose
client port listens on the host's address ``A`` only, and stays in front
of it until SIGTERM or SIGINT, stopping it then; it exits (non-zero, with
the server log's last lines) if the JVM dies. ``hermesx deploy`` starts one
on every host of the cluster file's ``[zookeeper]``.

With ``--tls-dir`` (a secure cluster) the server also opens a TLS client
port, ``--secure-client-port``, with the key store and trust store in that
directory (made by ``hermesx deploy`` from the cluster's CA): clients of a
secure cluster use that port, and the plain one stays bound to the loopback
address for the four-letter words only.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import signal
import sys
import threading

from nameservice.session import ZooKeeperTLS
from nameservice.zookeeper import (
    _QUORUM_MAIN,
    _base_config,
    _private_dir,
    _ServerProcess,
    _serving,
    _write_private,
)

__all__ = ["ZK_SERVER_PEM", "ensemble_serving", "main", "member_config"]

ZK_SERVER_PEM = "zk-server.pem"
"""In a secure member's TLS directory: its private key and certificate (PEM)."""


def member_config(
    directory: pathlib.Path,
    my_id: int,
    address: str,
    client_port: int,
    servers: dict[int, str],
    *,
    secure_client_port: int = 0,
    tls_dir: pathlib.Path | None = None,
) -> str:
    """The ``zoo.cfg`` of server ``my_id`` of an ensemble of ``servers`` (id → ``A:PEER:ELECT``)."""
    plain_address = "127.0.0.1" if tls_dir is not None else address
    lines = [*_base_config(directory, client_port, 500, plain_address)]
    if len(servers) > 1:
        lines += ["initLimit=20", "syncLimit=10"]
        lines += [f"server.{n}={where}" for n, where in sorted(servers.items())]
    if tls_dir is not None:
        lines += [
            f"secureClientPort={secure_client_port}",
            f"secureClientPortAddress={address}",
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
            # PEM: the server's key and certificate in one file, the cluster CA.
            f"ssl.keyStore.location={tls_dir / ZK_SERVER_PEM}",
            "ssl.keyStore.type=PEM",
            f"ssl.trustStore.location={tls_dir / 'ca.pem'}",
            "ssl.trustStore.type=PEM",
            # Clients present the cluster's certificates: only its processes get in.
            "ssl.clientAuth=need",
            "ssl.hostnameVerification=false",
        ]
    return "\n".join(lines) + "\n"


def ensemble_serving(
    connect_string: str, timeout: float, tls: ZooKeeperTLS | None = None
) -> str | None:
    """None once a client session opens on the ensemble (it has a quorum), else why not."""
    from kazoo.client import KazooClient
    from kazoo.handlers.threading import KazooTimeoutError

    # Refused connections while the servers start are expected: not worth a warning.
    quiet = logging.getLogger(f"{__name__}.probe")
    quiet.setLevel(logging.CRITICAL)
    options = tls.kazoo_options() if tls is not None else {}
    client = KazooClient(hosts=connect_string, timeout=max(timeout, 1.0), logger=quiet, **options)
    try:
        client.start(timeout=timeout)
    except KazooTimeoutError:
        return f"no session with {connect_string} within {timeout:.0f} s (no quorum yet?)"
    finally:
        client.stop()
        client.close()
    return None


def _servers(text: str) -> dict[int, str]:
    servers: dict[int, str] = {}
    for item in text.split(","):
        number, _, where = item.partition("=")
        if not number.strip().isdigit() or where.count(":") != 2:
            raise SystemExit(f"error: --servers item {item!r} is not N=ADDRESS:PEER:ELECTION")
        servers[int(number)] = where.strip()
    return servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nameservice.ensemble_member")
    parser.add_argument("--dir", required=True, type=pathlib.Path)
    parser.add_argument("--id", required=True, type=int)
    parser.add_argument("--address", required=True)
    parser.add_argument("--client-port", required=True, type=int)
    parser.add_argument("--servers", required=True, help="1=ADDR:PEER:ELECT,2=...")
    parser.add_argument("--secure-client-port", type=int, default=0)
    parser.add_argument("--tls-dir", type=pathlib.Path)
    args = parser.parse_args(argv)
    servers = _servers(args.servers)
    if args.id not in servers:
        raise SystemExit(f"error: --id {args.id} is not one of --servers")
    os.umask(0o077)
    _private_dir(args.dir / "data")
    _write_private(args.dir / "data" / "myid", f"{args.id}\n")
    config = member_config(
        args.dir,
        args.id,
        args.address,
        args.client_port,
        servers,
        secure_client_port=args.secure_client_port,
        tls_dir=args.tls_dir,
    )
    server = _ServerProcess(args.dir, config, _QUORUM_MAIN, args.client_port, die_with_parent=True)
    server.client_address = "127.0.0.1" if args.tls_dir is not None else args.address
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.launch()
    announced = False
    try:
        while not stop.wait(0.2):
            if server.exited():
                print(server.fail("exited"), file=sys.stderr, flush=True)
                return 1
            if not announced and _serving(server.client_port, server.client_address):
                print(f"zookeeper {args.id} serving on {args.address}", flush=True)
                announced = True
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
