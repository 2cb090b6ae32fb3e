"""The gateway process: a cluster client serving HTTP(S) on uvicorn (docs/DESIGN.md §13).

``hermesx gateway --listen HOST:PORT`` runs :func:`serve`. The gateway is a
client of the cluster with a certificate of its own, of role ``gateway``
(docs/DESIGN.md §10: the public RPCs only, so it can never start a copy of
an atom). On a secure cluster it serves HTTPS with that same certificate
(issued by the cluster's CA for ``localhost``, ``127.0.0.1`` and its name),
unless told to serve plain HTTP (behind a TLS proxy of one's own).

Starlette on uvicorn with uvloop was chosen by measurement: a hello-world
JSON POST answered in p50 496 µs against 454 µs for a bare ASGI callable on
the same server (http.client, one connection, loaded 2-core machine), under
a tenth of a hermesx call's own cost; Starlette brings a kept routing,
request and streaming layer for that.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import pathlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

import uvicorn
from starlette.routing import BaseRoute

from hermesx.client import Client
from hermesx.core.errors import ConfigurationError
from hermesx.core.files import write_private
from hermesx.gateway.app import GatewaySettings, create_app
from hermesx.gateway.idempotency import KeyStore
from hermesx.gateway.protocol import with_head_deadline
from hermesx.gateway.view import ClusterView
from hermesx.rpc import roles
from hermesx.rpc.roles import GATEWAY_CERT_NAME

__all__ = ["GatewayConfig", "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: str
    zk: str | None = None
    cluster: str | None = None
    tls: pathlib.Path | None = None
    # The certificate (in the cluster's TLS directory) the gateway shows and serves with.
    cert: str = GATEWAY_CERT_NAME
    # Where the Idempotency-Keys are kept (in memory without one).
    data: pathlib.Path | None = None
    plain_http: bool = False
    period: float = 0.5
    settings: GatewaySettings = field(default_factory=GatewaySettings)
    # Written with the gateway's URL once it listens (for `hermesx up`).
    url_file: pathlib.Path | None = None


def _bind(listen: str) -> tuple[socket.socket, str, int]:
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        raise ConfigurationError(f"--listen {listen!r} is not HOST:PORT (an IP address)") from None
    if not sep or not 0 <= port < 65536:
        raise ConfigurationError(f"--listen {listen!r} is not HOST:PORT")
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {listen}: {exc.strerror}") from exc
    sock.listen(512)
    sock.set_inheritable(True)
    return sock, host, sock.getsockname()[1]


def _check_certificate(tls: pathlib.Path, name: str) -> None:
    from hermesx.rpc import security

    found = security.cert_role(tls, name)
    if found != roles.GATEWAY:
        raise ConfigurationError(
            f"the certificate of {name} in {tls} is of role {found or 'none'}, not gateway: "
            f"issue it with `hermesx certs init --gateways {name}`"
        )


def serve(config: GatewayConfig, extra_routes: Sequence[BaseRoute] = ()) -> None:
    """Serve until SIGTERM or SIGINT."""
    client = Client(
        config.zk,
        config.cluster,
        tls=config.tls,
        cert=config.cert,
        timeout=config.settings.call_timeout,
    )
    tls = client.address.tls
    certfile = keyfile = None
    if tls is not None:
        _check_certificate(tls, config.cert)
        if not config.plain_http:
            from hermesx.rpc import security

            certs = security.load_certs(tls)
            certfile, keyfile = str(certs.cert(config.cert)), str(certs.key(config.cert))
    sock, host, port = _bind(config.listen)
    keys = KeyStore(config.data / "idempotency.sqlite" if config.data else None)
    view = ClusterView(client, period=config.period)
    shown = f"[{host}]" if ":" in host else host
    url = f"{'https' if certfile else 'http'}://{shown}:{port}"

    def ready() -> None:
        log.info("gateway of cluster %s serving at %s", client.address.cluster, url)
        print(f"gateway of cluster {client.address.cluster!r} at {url}", flush=True)
        if config.url_file is not None:
            # Whole or not at all: `hermesx up` reads it as soon as it exists.
            partial = config.url_file.with_suffix(".tmp")
            write_private(partial, url)
            partial.replace(config.url_file)

    try:
        client.start()
        app = create_app(view, keys, config.settings, extra_routes=extra_routes, on_ready=ready)
        uv = uvicorn.Config(
            app,
            loop="uvloop",
            http=with_head_deadline(config.settings.body_timeout),
            lifespan="on",
            log_level="warning",
            access_log=False,
            # Connections at once: more are answered 503 at once.
            limit_concurrency=512,
            timeout_keep_alive=5,
            # Event streams never end by themselves.
            timeout_graceful_shutdown=2,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
        server = uvicorn.Server(uv)
        server.run(sockets=[sock])
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        view.close()
        keys.close()
        client.close()
