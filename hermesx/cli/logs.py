"""`hermesx logs NAME [-f] [--since DURATION]`: an atom's log lines wherever it ran (§12).

The lines come from two places (docs/DESIGN.md §12), read by
:func:`hermesx.client.logs.atom_logs`: the atom's storesite, which keeps
those its nodes sent after checkpoints, passivations and moves (so a node
killed since loses only the lines after its last checkpoint), and the node
the atom is active on now, which holds the newest. With ``-f`` the verb asks again every
:data:`FOLLOW_INTERVAL_S`, each time asking the storesite where the atom is,
so it follows the atom across moves and recoveries; it ends with Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import time
from typing import Any

from hermesx.cli.atoms import connect
from hermesx.cli.output import emit
from hermesx.cli.parser import Verbs
from hermesx.core.errors import ConfigurationError, HermesError

__all__ = ["parse_duration", "register"]

FOLLOW_INTERVAL_S = 0.5
LEVELS = {0: "DEBUG", 1: "INFO", 2: "WARNING", 3: "ERROR"}
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit s, m, h or d (``90s``, ``5m``)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise ConfigurationError(
            f"--since {text!r} is not a duration: a number and s, m, h or d (e.g. 10m)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def _as_dict(line: Any, now: float) -> dict[str, Any]:
    return {
        "age": line.age,
        "n": line.n,
        "node": line.node,
        "time": line.time,
        "ago_s": round(max(0.0, now - line.time), 3),
        "level": LEVELS.get(line.level, str(line.level)),
        "text": line.text,
    }


def _as_text(line: Any) -> str:
    when = datetime.datetime.fromtimestamp(line.time).isoformat(sep=" ", timespec="milliseconds")
    level = LEVELS.get(line.level, str(line.level))
    return f"{when} {line.node}@{line.age} {level:<7} {line.text}"


def cmd_logs(args: argparse.Namespace) -> None:
    from hermesx.client.logs import atom_logs

    since = parse_duration(args.since) if args.since is not None else None
    with connect(args) as client:
        now = time.time()
        found = atom_logs(client, args.target)
        guid, lines, where = found.guid, found.lines, found.where
        if since is not None:
            lines = [line for line in lines if line.time >= now - since]
        if not args.follow:
            emit(
                args,
                {"guid": guid, "where": where, "lines": [_as_dict(x, now) for x in lines]},
                lambda: "\n".join(_as_text(x) for x in lines) or f"(no log lines of {guid})",
            )
            return
        last = (-1, -1)
        while True:
            for line in lines:
                if line.key > last:
                    if args.json:
                        print(json.dumps(_as_dict(line, time.time()), sort_keys=True), flush=True)
                    else:
                        print(_as_text(line), flush=True)
                    last = line.key
            time.sleep(FOLLOW_INTERVAL_S)
            try:
                lines = atom_logs(client, guid).lines
            except HermesError:
                continue  # a storesite restarting, a move under way: ask again


def register(verbs: Verbs) -> None:
    p = verbs.add("logs", cmd_logs, "show an atom's log lines wherever it ran")
    p.add_argument("target", help="atom name or GUID")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)"
    )
    p.add_argument("--since", metavar="DURATION", help="only lines of the last 30s, 10m, 2h, 1d")
