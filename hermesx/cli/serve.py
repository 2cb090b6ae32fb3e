"""The server processes: `hermesx node serve` and `hermesx storesite serve`.

A server process makes its files private, checks that its certificate is of
its role, and stops cleanly on SIGTERM or SIGINT; a node drains on SIGTERM
first (docs/DESIGN.md §5 "Drain").
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hermesx.cli.parser import Verbs
from hermesx.core.config import resolve_cluster
from hermesx.core.errors import ConfigurationError, UnreachableError

if TYPE_CHECKING:
    from hermesx.rpc.callserver import CallLimits

__all__ = ["register_node", "register_storesite"]


def _serve_privately(tls: pathlib.Path | None, name: str, role: str) -> None:
    """Start-up of a server process: private files, and a certificate of its role."""
    from hermesx.core.files import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)
    if tls is None:
        return
    from hermesx.rpc import security

    found = security.cert_role(tls, name)
    if found != role:
        flag = {"node": "--nodes", "storesite": "--storesites"}[role]
        raise ConfigurationError(
            f"the certificate of {name} in {tls} is of role {found or 'none'}, not {role}: "
            f"issue it with `hermesx certs init {flag} {name}`"
        )


def _stop_on_signals(stop: Callable[[], None], on_term: Callable[[], None] | None = None) -> None:
    def handler(signum: int, frame: object) -> None:
        action = on_term if signum == signal.SIGTERM and on_term is not None else stop
        threading.Thread(target=action, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _call_limits(settings: list[str]) -> CallLimits:
    """The call listener's limits with ``NAME=NUMBER`` settings (``--call-limit``) applied."""
    from dataclasses import fields, replace

    from hermesx.rpc.callserver import CallLimits

    kinds = {f.name: f.type for f in fields(CallLimits)}
    changed: dict[str, Any] = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        if name not in kinds:
            raise ConfigurationError(
                f"--call-limit {setting!r}: no limit {name!r} (one of {', '.join(kinds)})"
            )
        try:
            number = float(value) if kinds[name] == "float" else int(value)
        except ValueError:
            number = -1
        if not 0 < number < float("inf"):
            raise ConfigurationError(
                f"--call-limit {setting!r}: {name} takes a positive {kinds[name]}"
            )
        changed[name] = number
    return replace(CallLimits(), **changed)


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def _size(text: str, flag: str) -> int:
    """Bytes in ``text`` (``4096``, ``512MiB``, ``64G``)."""
    found = re.fullmatch(r"(\d+)\s*(?:([kmgt])(?:i?b)?|b)?", text.strip(), re.IGNORECASE)
    if found is None:
        raise ConfigurationError(f"{flag} {text!r} is not a size such as 4096, 512MiB or 64GiB")
    return int(found.group(1)) * _UNITS[(found.group(2) or "").lower()]


def cmd_node_serve(args: argparse.Namespace) -> None:
    from hermesx.node.config import NodeConfig
    from hermesx.node.supervisor import Supervisor

    address = resolve_cluster(args.zk, args.cluster, args.tls)
    _serve_privately(address.tls, args.name, "node")
    config = NodeConfig(
        name=args.name,
        listen=args.listen,
        call_listen=args.call_listen,
        advertise=args.advertise,
        zk=address.zk,
        cluster=address.cluster,
        tags=tuple(t for t in (args.tags or "").split(",") if t),
        data_dir=pathlib.Path(args.data) if args.data else None,
        hop_limit=args.hop_limit,
        session_timeout=args.session_timeout,
        test_hooks=args.test_hooks,
        tls_dir=address.tls,
        workers=args.workers,
        max_calls_per_atom=args.max_calls_per_atom,
        max_atoms=args.max_atoms,
        max_atom_memory_bytes=_size(args.max_atom_memory, "--max-atom-memory"),
        unresponsive_limit_s=args.unresponsive_limit,
        metrics_listen=args.metrics_listen,
        otlp_endpoint=args.otlp_endpoint,
        call_limits=_call_limits(args.call_limit),
    )
    supervisor = Supervisor(config)
    # SIGTERM (a service manager, `deploy upgrade`) drains first; Ctrl-C stops at once.
    _stop_on_signals(supervisor.stop, on_term=lambda: supervisor.drain_and_stop(args.drain_timeout))
    address_bound = supervisor.start()
    print(f"node {config.name} serving on {address_bound}", flush=True)
    supervisor.wait()
    if supervisor.gave_up is not None:
        # Non-zero, so a service manager restarts it as a new incarnation.
        raise UnreachableError(f"node {config.name} gave up serving: {supervisor.gave_up}")


def cmd_storesite_serve(args: argparse.Namespace) -> None:
    from storesite.process import serve

    address = resolve_cluster(args.zk, args.cluster, args.tls)
    _serve_privately(address.tls, args.id, "storesite")
    serve(
        args.id,
        args.listen,
        pathlib.Path(args.data),
        address.zk,
        address.cluster,
        ready=lambda where: print(f"storesite {args.id} serving on {where}", flush=True),
        tls_dir=address.tls,
        init=args.init,
        session_timeout=args.session_timeout,
        metrics_listen=args.metrics_listen,
        advertise=args.advertise,
        call_listen=args.call_listen,
    )


def _add_listen(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to bind (port 0: any)")
    parser.add_argument(
        "--advertise",
        default="",
        help="HOST[:PORT] peers dial, registered in the name service (default: the listen "
        "address; a wildcard listen registers the host's primary address)",
    )


def register_node(node: Verbs) -> None:
    p = node.add("serve", cmd_node_serve, "serve as a node (supervisor)")
    p.add_argument("--name", required=True)
    _add_listen(p)
    p.add_argument(
        "--call-listen",
        default="auto",
        help="HOST:PORT of the call channel for invocations (default auto: the --listen "
        "host, the next port; off: invocations over gRPC only)",
    )
    p.add_argument("--tags")
    p.add_argument("--data", help="node-local data directory (stash, module cache)")
    p.add_argument("--hop-limit", type=int, default=4)
    p.add_argument("--session-timeout", type=float, default=4.0)
    p.add_argument(
        "--workers", type=int, default=64, help="threads serving RPCs (default 64, at least 2)"
    )
    p.add_argument(
        "--max-calls-per-atom",
        type=int,
        default=0,
        help="invocations one atom may have waiting or running (default: a quarter of --workers)",
    )
    p.add_argument(
        "--max-atoms",
        type=int,
        default=0,
        help="atoms the node holds at most; creates and moves past it are refused "
        "(default: one per 256 KiB of the machine's memory, within what the process can map)",
    )
    p.add_argument(
        "--max-atom-memory",
        default="0",
        metavar="SIZE",
        help="the most the atoms' memory caps may add up to, e.g. 64GiB; creates and moves "
        "past it are refused (default: 16 times the machine's memory)",
    )
    p.add_argument(
        "--unresponsive-limit",
        type=float,
        default=0.0,
        help="seconds without answering its own Status before the node gives up its "
        "name-service session and stops (default: 3 session timeouts, at least 10)",
    )
    _observe_options(p)
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds SIGTERM's drain may take before the node stops anyway (default 30)",
    )
    p.add_argument("--test-hooks", action="store_true", help=argparse.SUPPRESS)
    # NAME=NUMBER of the call listener's CallLimits (tests shorten its time limits).
    p.add_argument("--call-limit", action="append", default=[], help=argparse.SUPPRESS)


def _observe_options(p: argparse.ArgumentParser, traces: bool = True) -> None:
    p.add_argument(
        "--metrics-listen",
        default="auto",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics; 'auto' (default): the "
        "--listen host on a free port, recorded in the name service; 'off': none",
    )
    if traces:
        p.add_argument(
            "--otlp-endpoint",
            default="",
            metavar="URL",
            help="export OpenTelemetry spans to this OTLP/gRPC collector (default: "
            "$OTEL_EXPORTER_OTLP_ENDPOINT; neither: no tracing)",
        )


def register_storesite(storesite: Verbs) -> None:
    p = storesite.add("serve", cmd_storesite_serve, "serve as a storesite")
    p.add_argument("--id", required=True)
    _add_listen(p)
    p.add_argument(
        "--call-listen",
        default="auto",
        help="HOST:PORT of the call channel for checkpoints (default auto: the --listen "
        "host, the next port; off: checkpoints over gRPC only)",
    )
    p.add_argument("--data", required=True)
    p.add_argument("--session-timeout", type=float, default=4.0)
    p.add_argument(
        "--init",
        action="store_true",
        help="create a new store when the data dir has none (set a damaged one aside)",
    )
    _observe_options(p, traces=False)
