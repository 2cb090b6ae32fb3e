"""Verbs on atoms through a cluster's client: create, invoke, locate, migrate, checkpoint,
passivate, lookup, ls, and `storesite move` (an atom's new home)."""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import TYPE_CHECKING, Any

from hermesx.cli.output import emit, progress, table, ticking
from hermesx.cli.parser import Verbs
from hermesx.core import codec
from hermesx.core.errors import ConfigurationError
from hermesx.core.identity import TAD
from hermesx.core.types import Hop

if TYPE_CHECKING:
    from hermesx.client import Client

__all__ = ["connect", "register", "register_home_move"]


def connect(args: argparse.Namespace) -> Client:
    """A client of the cluster the common options name (gRPC loads only now)."""
    from hermesx.client import Client

    return Client(args.zk, args.cluster, tls=args.tls)


def _json_value(text: str, what: str) -> Any:
    """The value of JSON ``text`` typed by the user; a clear error when it is not JSON."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ConfigurationError(f"{what} {shown!r} are not valid JSON: {exc}") from exc


def cmd_create(args: argparse.Namespace) -> None:
    with connect(args) as client:
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
    emit(args, {"guid": guid, "name": args.name}, guid)


def cmd_invoke(args: argparse.Namespace) -> None:
    payload = codec.json_to_msgpack(args.args) if args.args is not None else codec.pack(None)
    with connect(args) as client:
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

    emit(args, data, text)


def _hop_dict(hop: Hop) -> dict[str, Any]:
    d: dict[str, Any] = {"node": hop.node, "event": hop.event}
    if hop.tad is not None:
        d["tad"] = {"node": hop.tad.node, "age": hop.tad.age}
    if hop.detail:
        d["detail"] = hop.detail
    return d


def cmd_locate(args: argparse.Namespace) -> None:
    with connect(args) as client:
        loc = client.locate(args.target)
    emit(
        args, loc.as_dict(), f"{loc.guid} on {loc.node} (age {loc.age}, storesite {loc.storesite})"
    )


def cmd_migrate(args: argparse.Namespace) -> None:
    say = progress(args)
    with connect(args) as client:
        before = client.locate(args.target)
        say(f"moving {args.target} from {before.node} (age {before.age}) to {args.node}")
        with ticking(say, "still moving"):
            moved = client.migrate(args.target, args.node)
    data = {
        "guid": before.guid,
        "from": before.node,
        "node": moved.tad.node,
        "age": moved.tad.age,
        "state_bytes": moved.state_bytes,
        "held_ms": round(moved.held_ms, 3),
        "total_ms": round(moved.total_ms, 3),
    }
    emit(
        args,
        data,
        f"{args.target} moved {before.node} -> {moved.tad.node} (age {moved.tad.age}); "
        f"{moved.state_bytes} bytes, calls held {moved.held_ms:.1f} ms, "
        f"total {moved.total_ms:.1f} ms",
    )


def _tad_data(tad: TAD | None) -> dict[str, Any]:
    return {"node": tad.node if tad else None, "age": tad.age if tad else None}


def cmd_checkpoint(args: argparse.Namespace) -> None:
    with connect(args) as client:
        tad = client.checkpoint(args.target)
    emit(args, _tad_data(tad), f"checkpointed {args.target} at {tad}")


def cmd_passivate(args: argparse.Namespace) -> None:
    with connect(args) as client:
        tad = client.passivate(args.target)
    emit(args, _tad_data(tad), f"{args.target} is dormant (was {tad})")


def cmd_lookup(args: argparse.Namespace) -> None:
    with connect(args) as client:
        rows: list[dict[str, str | None]]
        if args.scope:
            guids = client.lookup(args.pattern, scope=args.scope, all=args.all)
            by_guid = {g: n for n, g in client.names().items()}
            rows = [{"guid": g, "name": by_guid.get(g)} for g in guids]
        else:
            rows = [
                {"name": n, "guid": g} for n, g in client.lookup_names(args.pattern, all=args.all)
            ]
    emit(
        args,
        rows,
        lambda: (
            table([(r["name"] or "-", r["guid"]) for r in rows], ["NAME", "GUID"])
            if rows
            else "no match"
        ),
    )


def cmd_ls(args: argparse.Namespace) -> None:
    from hermesx.rpc.storesite_client import StoresiteClient

    with connect(args) as client:
        names = {g: n for n, g in client.names().items()}
        rows: list[dict[str, Any]] = []
        for sid, member in sorted(client.naming.storesites().items()):
            with StoresiteClient(
                member.address, sid=sid, timeout=10.0, tls=client.identity
            ) as storesite:
                listing = storesite.list_atoms()
            for rec in listing:
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
    emit(
        args,
        rows,
        lambda: (
            table(
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


def cmd_storesite_move(args: argparse.Namespace) -> None:
    with connect(args) as client:
        old = client.move_home(args.target, args.storesite)
        guid = client.guid_of(args.target)
    emit(
        args,
        {"guid": guid, "from": old, "storesite": args.storesite},
        f"{args.target} is now homed at storesite {args.storesite} (was {old})",
    )


def register(verbs: Verbs) -> None:
    p = verbs.add("create", cmd_create, "create an atom; prints its GUID")
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

    p = verbs.add("invoke", cmd_invoke, "invoke a method of an atom by name or GUID")
    p.add_argument("target")
    p.add_argument("method")
    p.add_argument("args", nargs="?", help="JSON arguments")
    p.add_argument("--via", help="enter the cluster at this node")
    p.add_argument("--trace", action="store_true", help="show the path the call took")
    p.add_argument(
        "--request-id",
        help="send this request id (from an outcome_unknown error): the call runs at most once",
    )

    p = verbs.add("locate", cmd_locate, "where an atom is: node, age, storesite")
    p.add_argument("target")

    p = verbs.add("migrate", cmd_migrate, "move an atom to a node")
    p.add_argument("target")
    p.add_argument("node")

    p = verbs.add("checkpoint", cmd_checkpoint, "checkpoint an atom now")
    p.add_argument("target")

    p = verbs.add("passivate", cmd_passivate, "checkpoint an atom and make it dormant")
    p.add_argument("target")

    p = verbs.add(
        "lookup", cmd_lookup, "find atoms by name pattern, or by alias pattern in a scope"
    )
    p.add_argument("pattern")
    p.add_argument("--scope")
    p.add_argument("--all", action="store_true", help="all matches, not any one")

    verbs.add("ls", cmd_ls, "list atoms, where they are, and their storesites")


def register_home_move(storesite: Verbs) -> None:
    """`hermesx storesite move`: an atom verb that lives among the storesite's verbs."""
    p = storesite.add("move", cmd_storesite_move, "make another storesite an atom's home")
    p.add_argument("target", help="atom name or GUID")
    p.add_argument("storesite", help="id of the new home storesite")
