"""The `hermesx` command line (DESIGN.md §8).

Every verb prints something a person can read, or with ``--json`` one JSON
document a program can read. Failures print one line ``error: …`` on stderr
and exit non-zero; with ``--json`` the error is also a JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from hermesx.core import codec
from hermesx.core.config import check_environment, resolve_cluster
from hermesx.core.errors import ConfigurationError, HermesError, UnreachableError

__all__ = ["main"]

log = logging.getLogger("hermesx")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own errors: one line, exit 2
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=None, sort_keys=True, default=str))
    else:
        print(text() if callable(text) else text)


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not getattr(args, "quiet", False):
            # A closed stderr must not stop a verb halfway through its clean-up.
            with contextlib.suppress(OSError, ValueError):
                print(f"… {message}", file=sys.stderr, flush=True)

    return say


def _client(args: argparse.Namespace) -> Any:
    from hermesx.client import Client

    return Client(args.zk, args.cluster, tls=args.tls)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- verbs


def cmd_run(args: argparse.Namespace) -> None:
    from hermesx.runtime.atom import run_once

    result = run_once(
        pathlib.Path(args.wasm),
        args.method,
        codec.json_to_msgpack(args.args) if args.args is not None else codec.pack(None),
        codec.json_to_msgpack(args.init) if args.init is not None else b"",
    )
    value = codec.msgpack_to_python(result)
    _emit(args, {"result": value}, json.dumps(value))


def cmd_build(args: argparse.Namespace) -> None:
    from hermesx.runtime.build import build_atom

    out = build_atom(pathlib.Path(args.src), pathlib.Path(args.output))
    _emit(
        args,
        {"output": str(out), "bytes": out.stat().st_size},
        f"built {out} ({out.stat().st_size} bytes)",
    )


def cmd_up(args: argparse.Namespace) -> None:
    from hermesx.local.cluster import LocalCluster, NodeSpec

    address = resolve_cluster("-", args.cluster)
    cluster = LocalCluster(
        address.cluster,
        session_timeout=args.session_timeout,
        test_hooks=args.test_hooks,
        secure=not args.insecure,
    )
    specs = [NodeSpec(f"n{i + 1}") for i in range(args.nodes)]
    if args.node:
        specs = [
            NodeSpec(n.partition(":")[0], tuple(filter(None, n.partition(":")[2].split(","))))
            for n in args.node
        ]
    cluster.up(
        specs,
        storesites=args.storesite or ["s1"],
        zk=args.zk,
        progress=_progress(args),
        init_stores=args.init_stores,
    )
    data = {
        "cluster": cluster.name,
        "zk": cluster.zk,
        "pids": cluster.procs,
        "dir": str(cluster.dir),
    }
    _emit(
        args,
        data,
        lambda: (
            f"cluster {cluster.name!r} is up: ZooKeeper at {cluster.zk}, "
            f"storesites {', '.join(cluster.storesite_ids)}, "
            f"nodes {', '.join(cluster.node_specs)}\n"
            f"logs in {cluster.dir}\n"
            f"use it:  hermesx nodes   "
            f"(or export HERMESX_ZK={cluster.zk} HERMESX_CLUSTER={cluster.name})\n"
            f"stop it: hermesx down"
        ),
    )


def cmd_down(args: argparse.Namespace) -> None:
    from hermesx.local.cluster import LocalCluster

    address_cluster = args.cluster or os.environ.get("HERMESX_CLUSTER") or "local"
    cluster = LocalCluster.load(address_cluster)
    stopped = cluster.down(progress=_progress(args))
    _emit(
        args,
        {"cluster": cluster.name, "stopped": stopped},
        f"cluster {cluster.name!r} stopped ({len(stopped)} processes)",
    )


def cmd_nodes(args: argparse.Namespace) -> None:
    from hermesx.local.cluster import LocalCluster

    with _client(args) as client:
        members = client.nodes()
        pids: dict[str, int] = {}
        try:
            local = LocalCluster.load(client.address.cluster)
            pids = {
                k.removeprefix("node-"): v for k, v in local.procs.items() if k.startswith("node-")
            }
        except ConfigurationError:
            pass
        rows = []
        for name in sorted(members):
            m = members[name]
            row: dict[str, Any] = {"name": name, "address": m.address, "tags": list(m.tags)}
            if m.incarnation:
                # Changes on every restart: atoms recorded at an older one are recovered.
                row["incarnation"] = m.incarnation
            pid = m.data.get("pid", pids.get(name))
            if pid is not None:
                row["pid"] = pid
            try:
                status = client.node_status(name, timeout=2.0)
                row["atoms"] = status.active_atoms
            except HermesError:
                row["atoms"] = None
            rows.append(row)
    _emit(
        args,
        rows,
        lambda: (
            _table(
                [
                    (
                        r["name"],
                        r["address"],
                        ",".join(r["tags"]) or "-",
                        r.get("pid", "-"),
                        r["atoms"],
                    )
                    for r in rows
                ],
                ["NODE", "ADDRESS", "TAGS", "PID", "ATOMS"],
            )
            if rows
            else "no nodes"
        ),
    )


def cmd_create(args: argparse.Namespace) -> None:
    with _client(args) as client:
        guid = client.create(
            pathlib.Path(args.wasm),
            name=args.name or "",
            on=args.on,
            aliases=args.alias or [],
            init=_json_value(args.init, "init arguments") if args.init is not None else None,
            checkpoint=args.checkpoint,
            reentrant=args.reentrant,
            tags=[t for t in (args.tags or "").split(",") if t],
            idle_passivate_seconds=args.idle_passivate,
            placement="" if args.placement == "none" else args.placement,
            reply_window=args.reply_window or "",
        )
    _emit(args, {"guid": guid, "name": args.name}, guid)


def _json_value(text: str, what: str) -> Any:
    """The value of JSON ``text`` typed by the user; a clear error when it is not JSON."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ConfigurationError(f"{what} {shown!r} are not valid JSON: {exc}") from exc


def cmd_invoke(args: argparse.Namespace) -> None:
    payload = codec.json_to_msgpack(args.args) if args.args is not None else codec.pack(None)
    with _client(args) as client:
        outcome = client.invoke(
            args.target,
            args.method,
            payload,
            via=args.via,
            trace=args.trace,
            request_id=args.request_id or "",
        )
    value = codec.msgpack_to_python(outcome.result)
    hops = [_hop_dict(h) for h in outcome.trace]
    data: dict[str, Any] = {"result": value, "guid": outcome.guid}
    if outcome.tad is not None:
        data["tad"] = {"node": outcome.tad.node, "age": outcome.tad.age}
    if args.trace:
        data["trace"] = hops

    def text() -> str:
        lines = [json.dumps(value)]
        if args.trace:
            for i, hop in enumerate(hops):
                tad = f"{hop['tad']['node']}@{hop['tad']['age']}" if hop.get("tad") else "-"
                detail = f"  {hop['detail']}" if hop.get("detail") else ""
                lines.append(f"  {i + 1}. {hop['node']:<12} {hop['event']:<9} tad={tad}{detail}")
        return "\n".join(lines)

    _emit(args, data, text)


def _hop_dict(hop: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"node": hop.node, "event": hop.event}
    if hop.tad.node:
        d["tad"] = {"node": hop.tad.node, "age": hop.tad.age}
    if hop.detail:
        d["detail"] = hop.detail
    return d


def cmd_locate(args: argparse.Namespace) -> None:
    with _client(args) as client:
        loc = client.locate(args.target)
    _emit(
        args, loc.as_dict(), f"{loc.guid} on {loc.node} (age {loc.age}, storesite {loc.storesite})"
    )


def cmd_migrate(args: argparse.Namespace) -> None:
    say = _progress(args)
    with _client(args) as client:
        before = client.locate(args.target)
        say(f"moving {args.target} from {before.node} (age {before.age}) to {args.node}")
        with _ticking(say, "still moving"):
            reply = client.migrate(args.target, args.node)
    data = {
        "guid": before.guid,
        "from": before.node,
        "node": reply.tad.node,
        "age": reply.tad.age,
        "state_bytes": reply.state_bytes,
        "held_ms": round(reply.held_ms, 3),
        "total_ms": round(reply.total_ms, 3),
    }
    _emit(
        args,
        data,
        f"{args.target} moved {before.node} -> {reply.tad.node} (age {reply.tad.age}); "
        f"{reply.state_bytes} bytes, calls held {reply.held_ms:.1f} ms, "
        f"total {reply.total_ms:.1f} ms",
    )


@contextlib.contextmanager
def _ticking(say: Callable[[str], None], what: str, every: float = 1.0) -> Iterator[None]:
    """Say ``what`` with the elapsed time every ``every`` seconds until the block ends."""
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(every):
            say(f"{what} ({time.monotonic() - started:.0f} s)")

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()


def cmd_checkpoint(args: argparse.Namespace) -> None:
    with _client(args) as client:
        tad = client.checkpoint(args.target)
    _emit(
        args,
        {"node": tad.node if tad else None, "age": tad.age if tad else None},
        f"checkpointed {args.target} at {tad}",
    )


def cmd_passivate(args: argparse.Namespace) -> None:
    with _client(args) as client:
        tad = client.passivate(args.target)
    _emit(
        args,
        {"node": tad.node if tad else None, "age": tad.age if tad else None},
        f"{args.target} is dormant (was {tad})",
    )


def cmd_lookup(args: argparse.Namespace) -> None:
    with _client(args) as client:
        if args.scope:
            guids = client.lookup(args.pattern, scope=args.scope, all=args.all)
            by_guid = {g: n for n, g in client.names().items()}
            rows = [{"guid": g, "name": by_guid.get(g)} for g in guids]
        else:
            rows = [
                {"name": n, "guid": g} for n, g in client.lookup_names(args.pattern, all=args.all)
            ]
    _emit(
        args,
        rows,
        lambda: (
            _table([(r["name"] or "-", r["guid"]) for r in rows], ["NAME", "GUID"])
            if rows
            else "no match"
        ),
    )


def cmd_ls(args: argparse.Namespace) -> None:
    import grpc

    from hermesx.rpc.proto import hermesx_pb2 as pb
    from hermesx.rpc.proto import hermesx_pb2_grpc as pbg
    from hermesx.rpc.status import error_from_rpc

    with _client(args) as client:
        names = {g: n for n, g in client.names().items()}
        rows: list[dict[str, Any]] = []
        for sid, member in sorted(client.naming.storesites().items()):
            stub = client.channels.stub(member.address, pbg.StoresiteStub)
            try:
                listing = stub.ListAtoms(pb.Empty(), timeout=10.0)
            except grpc.RpcError as exc:
                raise error_from_rpc(exc, f"storesite {sid}") from exc
            for rec in listing.atoms:
                rows.append(
                    {
                        "name": names.get(rec.guid) or rec.meta.name or None,
                        "guid": rec.guid,
                        "node": None if rec.dormant else rec.tad.node,
                        "age": rec.tad.age,
                        "dormant": rec.dormant,
                        "storesite": sid,
                    }
                )
    rows.sort(key=lambda r: (r["name"] is None, r["name"] or "", r["guid"]))
    _emit(
        args,
        rows,
        lambda: (
            _table(
                [
                    (
                        r["name"] or "-",
                        r["guid"],
                        r["node"] or "(dormant)",
                        r["age"],
                        r["storesite"],
                    )
                    for r in rows
                ],
                ["NAME", "GUID", "NODE", "AGE", "STORESITE"],
            )
            if rows
            else "no atoms"
        ),
    )


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


def cmd_node_serve(args: argparse.Namespace) -> None:
    from hermesx.node.config import NodeConfig
    from hermesx.node.supervisor import Supervisor

    address = resolve_cluster(args.zk, args.cluster, args.tls)
    _serve_privately(address.tls, args.name, "node")
    config = NodeConfig(
        name=args.name,
        listen=args.listen,
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
        unresponsive_limit_s=args.unresponsive_limit,
    )
    supervisor = Supervisor(config)
    _stop_on_signals(supervisor.stop)
    address_bound = supervisor.start()
    print(f"node {config.name} serving on {address_bound}", flush=True)
    supervisor.wait()
    if supervisor.gave_up is not None:
        # Non-zero, so a service manager restarts it as a new incarnation.
        raise UnreachableError(f"node {config.name} gave up serving: {supervisor.gave_up}")


def cmd_storesite_serve(args: argparse.Namespace) -> None:
    from storesite.server import serve

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
    )


def cmd_certs_init(args: argparse.Namespace) -> None:
    from hermesx.core.config import DEFAULT_CLUSTER, cluster_dir
    from hermesx.rpc import roles, security

    cluster = args.cluster or os.environ.get("HERMESX_CLUSTER") or DEFAULT_CLUSTER
    directory = pathlib.Path(args.dir) if args.dir else cluster_dir(cluster) / "tls"
    wanted: dict[str, str] = {}

    def add(name: str, role: str) -> None:
        if wanted.get(name, role) != role:
            raise ConfigurationError(f"{name!r} is given two roles: {wanted[name]} and {role}")
        wanted[name] = role

    for flag, role in [
        (args.nodes, roles.NODE),
        (args.storesites, roles.STORESITE),
        (args.gateways, roles.GATEWAY),
        (args.clients, roles.CLIENT),
    ]:
        for name in (n for n in (flag or "").split(",") if n):
            add(name, role)
    for entry in (n for n in (args.names or "").split(",") if n):
        role, sep, name = entry.partition(":")
        if not sep:
            raise ConfigurationError(
                f"--names entry {entry!r} has no role: write ROLE:NAME "
                f"(roles: {', '.join(roles.ROLES)}) or use --nodes/--storesites/--gateways"
            )
        add(name, roles.validate_role(role))
    add(roles.CLIENT_CERT_NAME, roles.CLIENT)
    certs = security.init_certs(directory, cluster, wanted)
    made = certs.names()
    _emit(
        args,
        {"cluster": cluster, "dir": str(directory), "names": made, "roles": wanted},
        f"cluster {cluster!r}: CA and certificates for "
        f"{', '.join(f'{n} ({wanted.get(n, security.cert_role(directory, n))})' for n in made)} "
        f"in {directory}\n"
        f"give each process its own NAME.pem/NAME.key, ca.pem and zk.secret "
        f"(clients: zk-client.secret instead of zk.secret); keep ca.key safe",
    )


def cmd_storesite_move(args: argparse.Namespace) -> None:
    with _client(args) as client:
        old = client.move_home(args.target, args.storesite)
        guid = client.guid_of(args.target)
    _emit(
        args,
        {"guid": guid, "from": old, "storesite": args.storesite},
        f"{args.target} is now homed at storesite {args.storesite} (was {old})",
    )


def _stop_on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: object) -> None:
        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_bench(args: argparse.Namespace) -> None:
    figures: dict[str, float]
    if args.what == "runtime":
        from hermesx.bench.runtime import run as run_runtime

        figures = run_runtime()
    elif args.what == "naming":
        from nameservice.bench import run as run_naming

        figures = run_naming(args.zk)
    elif args.what == "invoke":
        from hermesx.bench.invoke import run as run_invoke

        figures = run_invoke(progress=_progress(args))
    elif args.what == "storesite":
        from hermesx.bench.storesite import run as run_storesite

        figures = run_storesite(progress=_progress(args), atoms=args.atoms or 10_000)
    elif args.what == "atoms":
        from hermesx.bench.atoms import run as run_atoms

        figures = run_atoms(args.atoms or 100_000, progress=_progress(args))
    else:
        from hermesx.bench.migrate import run as run_migrate

        figures = run_migrate(progress=_progress(args))
    _emit(
        args,
        figures,
        lambda: _table(
            [(k, f"{v:.3f}" if isinstance(v, float) else v) for k, v in figures.items()],
            ["FIGURE", "VALUE"],
        ),
    )


def cmd_demo(args: argparse.Namespace) -> None:
    import importlib.util

    # The demo lives with its atoms in examples/, beside the package.
    script = (
        pathlib.Path(__file__).resolve().parents[2] / "examples" / "expense_voucher" / "demo.py"
    )
    spec = importlib.util.spec_from_file_location("hermesx_demo_expense_voucher", script)
    if spec is None or spec.loader is None or not script.exists():
        raise ConfigurationError(f"the demo is not installed here (no {script})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.run_demo(json_output=args.json, progress=_progress(args))


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument(
        "--zk", help="ZooKeeper connect string (default: $HERMESX_ZK or the local cluster)"
    )
    common.add_argument("--cluster", help="cluster name (default: $HERMESX_CLUSTER or 'local')")
    common.add_argument(
        "--tls",
        help="cluster certificate directory (default: $HERMESX_TLS or the local cluster's)",
    )
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    common.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")

    parser = _Parser(
        prog="hermesx", description="Mobile WebAssembly atoms, invoked by name wherever they are."
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)

    def verb(
        name: str, func: Callable[[argparse.Namespace], None], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = verb("run", cmd_run, "run one atom in-process, no cluster")
    p.add_argument("wasm")
    p.add_argument("method")
    p.add_argument("args", nargs="?", help="JSON arguments")
    p.add_argument("--init", help="JSON arguments for hx_init")

    p = verb("build", cmd_build, "compile an atom written in C to WebAssembly")
    p.add_argument("src")
    p.add_argument("-o", "--output", required=True)

    p = verb("up", cmd_up, "start a local cluster (ZooKeeper, storesite, nodes)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--node", action="append", help="NAME[:TAG,TAG] (repeatable; replaces --nodes)")
    p.add_argument("--storesite", action="append", help="storesite id (repeatable; default s1)")
    p.add_argument("--session-timeout", type=float, default=4.0)
    p.add_argument("--test-hooks", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--insecure", action="store_true", help="no mutual TLS, no roles and no name-service secret"
    )
    p.add_argument(
        "--init-stores",
        action="store_true",
        help="let storesites whose store is missing or damaged start a new one "
        "(a damaged one is set aside; a new cluster's storesites do this anyway)",
    )

    verb("down", cmd_down, "stop the local cluster")
    verb("nodes", cmd_nodes, "list the live nodes")

    p = verb("create", cmd_create, "create an atom; prints its GUID")
    p.add_argument("wasm")
    p.add_argument("--name")
    p.add_argument("--on", help="node to create it on (default: least loaded)")
    p.add_argument("--alias", action="append", help="SCOPE=ALIAS (repeatable)")
    p.add_argument("--init", help="JSON arguments for hx_init")
    p.add_argument(
        "--checkpoint", default="every-call", help="every-call | on-request | every:N | every:Ts"
    )
    p.add_argument("--reentrant", action="store_true")
    p.add_argument("--tags", help="placement: nodes must carry these tags")
    p.add_argument("--idle-passivate", type=float, default=0.0, metavar="SECONDS")
    p.add_argument(
        "--placement",
        choices=["none", "follow-caller"],
        default="none",
        help="follow-caller: move toward the node whose atoms call it most",
    )
    p.add_argument(
        "--reply-window",
        metavar="ENTRIES[,SECONDSs]",
        help="replies kept for retried request ids: a count, an age (600s) or both "
        "(default 1024, no age limit); an older retry is refused with request_expired",
    )

    p = verb("invoke", cmd_invoke, "invoke a method of an atom by name or GUID")
    p.add_argument("target")
    p.add_argument("method")
    p.add_argument("args", nargs="?", help="JSON arguments")
    p.add_argument("--via", help="enter the cluster at this node")
    p.add_argument("--trace", action="store_true", help="show the path the call took")
    p.add_argument(
        "--request-id",
        help="send this request id (from an outcome_unknown error): the call runs at most once",
    )

    p = verb("locate", cmd_locate, "where an atom is: node, age, storesite")
    p.add_argument("target")

    p = verb("migrate", cmd_migrate, "move an atom to a node")
    p.add_argument("target")
    p.add_argument("node")

    p = verb("checkpoint", cmd_checkpoint, "checkpoint an atom now")
    p.add_argument("target")

    p = verb("passivate", cmd_passivate, "checkpoint an atom and make it dormant")
    p.add_argument("target")

    p = verb("lookup", cmd_lookup, "find atoms by name pattern, or by alias pattern in a scope")
    p.add_argument("pattern")
    p.add_argument("--scope")
    p.add_argument("--all", action="store_true", help="all matches, not any one")

    verb("ls", cmd_ls, "list atoms, where they are, and their storesites")

    node = sub.add_parser("node", help="run a node process").add_subparsers(
        dest="what", required=True, parser_class=_Parser
    )
    p = node.add_parser("serve", parents=[common], help="serve as a node (supervisor)")
    p.set_defaults(func=cmd_node_serve)
    p.add_argument("--name", required=True)
    p.add_argument("--listen", default="127.0.0.1:0")
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
        "--unresponsive-limit",
        type=float,
        default=0.0,
        help="seconds without answering its own Status before the node gives up its "
        "name-service session and stops (default: 3 session timeouts, at least 10)",
    )
    p.add_argument("--test-hooks", action="store_true", help=argparse.SUPPRESS)

    store = sub.add_parser("storesite", help="run a storesite process").add_subparsers(
        dest="what", required=True, parser_class=_Parser
    )
    p = store.add_parser("serve", parents=[common], help="serve as a storesite")
    p.set_defaults(func=cmd_storesite_serve)
    p.add_argument("--id", required=True)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--data", required=True)
    p.add_argument("--session-timeout", type=float, default=4.0)
    p.add_argument(
        "--init",
        action="store_true",
        help="create a new store when the data dir has none (set a damaged one aside)",
    )
    p = store.add_parser("move", parents=[common], help="make another storesite an atom's home")
    p.set_defaults(func=cmd_storesite_move)
    p.add_argument("target", help="atom name or GUID")
    p.add_argument("storesite", help="id of the new home storesite")

    certs = sub.add_parser("certs", help="cluster certificates").add_subparsers(
        dest="what", required=True, parser_class=_Parser
    )
    p = certs.add_parser(
        "init", parents=[common], help="make a cluster CA and certificates for its processes"
    )
    p.set_defaults(func=cmd_certs_init)
    p.add_argument("--dir", help="where (default: the local cluster's tls directory)")
    p.add_argument("--nodes", help="node names to certify (role node), comma-separated")
    p.add_argument("--storesites", help="storesite ids to certify (role storesite)")
    p.add_argument("--gateways", help="gateway names to certify (role gateway)")
    p.add_argument("--clients", help="more client certificates (role client) beside 'client'")
    p.add_argument("--names", help="ROLE:NAME entries, comma-separated (e.g. node:n1,storesite:s1)")

    p = verb("bench", cmd_bench, "run a benchmark and print its figures")
    p.add_argument("what", choices=["runtime", "naming", "invoke", "storesite", "migrate", "atoms"])
    p.add_argument(
        "--atoms",
        type=int,
        default=None,
        help="storesite: how many dormant atoms to create (10,000); "
        "atoms: how many active atoms one process holds (100,000)",
    )

    p = verb("demo", cmd_demo, "run a demo")
    p.add_argument("name", choices=["expense-voucher"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    if args.verb in ("node", "storesite"):
        level = min(level, logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verb not in ("node", "storesite"):
        _interrupt_on_termination()
    try:
        check_environment()
        args.func(args)
    except HermesError as exc:
        return _fail(args, exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``hermesx demo | head``): the clean-up in the
        # verb's ``finally`` blocks has run; exit as a piped tool would,
        # without a traceback when Python flushes stdout at exit.
        _discard_stdout()
        return 128 + signal.SIGPIPE
    except Exception as exc:  # a bug: still one line, with the type, and a log for details
        log.debug("unexpected failure", exc_info=True)
        return _fail(args, exc)
    return 0


def _interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP interrupt the verb like Ctrl-C does.

    Python's default for them ends the process at once, skipping the
    ``finally`` blocks that stop what a verb started (the demo's and the
    benchmarks' clusters); as a KeyboardInterrupt they run.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


def _discard_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _fail(args: argparse.Namespace, exc: BaseException) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    if getattr(args, "json", False):
        kind = getattr(exc, "kind", "internal")
        data = {"error": message, "kind": kind, "type": type(exc).__name__}
        request_id = getattr(exc, "request_id", "")
        if request_id:
            data["request_id"] = request_id
        print(json.dumps(data))
    print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
