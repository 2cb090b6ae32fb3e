"""`hermesx gateway`: the HTTP gateway and web console of a cluster (docs/DESIGN.md §13)."""

from __future__ import annotations

import argparse
import os
import pathlib

from hermesx.cli.parser import Verbs
from hermesx.core.errors import ConfigurationError

__all__ = ["register"]


def cmd_gateway(args: argparse.Namespace) -> None:
    from hermesx.core.files import PRIVATE_UMASK, private_dir
    from hermesx.gateway.app import GatewaySettings
    from hermesx.gateway.server import GatewayConfig, serve

    os.umask(PRIVATE_UMASK)
    token = None
    if args.token_file:
        try:
            token = pathlib.Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read --token-file: {exc.strerror}") from exc
        if len(token) < 16:
            raise ConfigurationError("the token in --token-file must be 16 characters or more")
    data = pathlib.Path(args.data) if args.data else None
    if data is not None:
        private_dir(data)
    serve(
        GatewayConfig(
            listen=args.listen,
            zk=args.zk,
            cluster=args.cluster,
            tls=pathlib.Path(args.tls) if args.tls else None,
            cert=args.cert,
            data=data,
            plain_http=args.plain_http,
            period=args.period,
            settings=GatewaySettings(
                max_body=args.max_body,
                body_timeout=args.body_timeout,
                call_timeout=args.call_timeout,
                token=token,
            ),
            url_file=pathlib.Path(args.url_file) if args.url_file else None,
        )
    )


def register(verbs: Verbs) -> None:
    p = verbs.add("gateway", cmd_gateway, "serve the cluster over HTTP: JSON API and web console")
    p.add_argument("--listen", default="127.0.0.1:7080", help="HOST:PORT (port 0: any free one)")
    p.add_argument("--data", help="directory keeping the Idempotency-Keys (default: in memory)")
    p.add_argument("--cert", default="gateway", help="its certificate's name (role gateway)")
    p.add_argument("--plain-http", action="store_true", help="serve HTTP even on a secure cluster")
    p.add_argument("--token-file", help="require this bearer token on /v1 requests")
    p.add_argument("--max-body", type=int, default=8 * 2**20, help="largest body, bytes")
    p.add_argument(
        "--body-timeout", type=float, default=10.0, help="seconds a body may take to arrive"
    )
    p.add_argument("--call-timeout", type=float, default=30.0, help="default deadline of a call")
    p.add_argument("--period", type=float, default=0.5, help="seconds between cluster readings")
    p.add_argument("--url-file", help=argparse.SUPPRESS)
